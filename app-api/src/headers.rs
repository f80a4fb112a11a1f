//! Headers received across the boundary, turned into a [`HeaderMap`] only when asked for.

use bytes::Bytes;
use http::HeaderMap;
use http::header::HeaderValue;

/// Headers as the other side sent them, checked and copied into one buffer. The [`HeaderMap`]
/// is built the first time the app asks for it: an app that reads no header pays for no map,
/// and one that does gets its values without a copy each.
#[derive(Debug, Default)]
pub(crate) struct Headers {
    /// Each header as its name's and its value's length (`u32`, native order), then the name,
    /// then the value.
    raw: Bytes,
    map: std::sync::OnceLock<HeaderMap>,
}

impl Headers {
    /// Headers that are a map already (the mock host's fetch responses).
    #[cfg(feature = "testing")]
    pub(crate) fn from_map(map: HeaderMap) -> Self {
        Headers {
            raw: Bytes::new(),
            map: std::sync::OnceLock::from(map),
        }
    }

    /// Checks and copies `headers` (name, value): names must be HTTP tokens, values free of
    /// control characters but tab, as [`HeaderName`](http::HeaderName) and [`HeaderValue`]
    /// require.
    pub(crate) fn from_raw<'a, I>(headers: I) -> Result<Self, String>
    where
        I: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
    {
        let size = headers.clone().map(|(n, v)| 8 + n.len() + v.len()).sum();
        let mut raw = Vec::with_capacity(size);
        for (name, value) in headers {
            // Folds rather than `all`: no branch per byte.
            let token = name.iter().fold(true, |ok, &b| ok & TOKEN[usize::from(b)]);
            let too_long = u32::try_from(name.len().max(value.len())).is_err();
            if name.is_empty() || too_long || !token {
                return Err(format!(
                    "invalid header name {:?}",
                    String::from_utf8_lossy(name)
                ));
            }
            if !visible(value) {
                return Err(format!(
                    "invalid value for header {}",
                    String::from_utf8_lossy(name)
                ));
            }
            // Both lengths fit in u32: checked above.
            raw.extend_from_slice(&(name.len() as u32).to_ne_bytes());
            raw.extend_from_slice(&(value.len() as u32).to_ne_bytes());
            raw.extend_from_slice(name);
            raw.extend_from_slice(value);
        }
        Ok(Headers {
            raw: Bytes::from(raw),
            map: std::sync::OnceLock::new(),
        })
    }

    pub(crate) fn map(&self) -> &HeaderMap {
        self.map.get_or_init(|| self.parse())
    }

    fn parse(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        let mut at = 0;
        let len_at = |at: usize| {
            let bytes = self
                .raw
                .get(at..at + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok());
            bytes.map_or(0, |b| u32::from_ne_bytes(b) as usize)
        };
        while at < self.raw.len() {
            let (name_len, value_len) = (len_at(at), len_at(at + 4));
            let name_at = at + 8;
            let value_at = name_at + name_len;
            at = value_at + value_len;
            let name = http::HeaderName::from_bytes(&self.raw[name_at..value_at]);
            let value = HeaderValue::from_maybe_shared(self.raw.slice(value_at..at));
            // Both were checked in `from_raw`.
            if let (Ok(name), Ok(value)) = (name, value) {
                map.append(name, value);
            }
        }
        map
    }
}

/// Header names and values received recently on this thread.
///
/// An app sends the same few response headers with every answer (its `content-type`, say).
/// Parsing a name, and checking and copying a value into an allocation of its own, cost
/// several times more than comparing a few bytes with the last ones seen and sharing those.
pub(crate) mod recent {
    use std::cell::RefCell;

    use http::header::{HeaderName, HeaderValue, InvalidHeaderName, InvalidHeaderValue};

    /// Slots per kind. Each holds the last name (value) whose slot index its bytes give.
    const SLOTS: usize = 8;
    /// Longer names and values are not kept: they rarely repeat.
    const LONGEST: usize = 64;

    /// This thread's recent names and values.
    pub(crate) struct Recent {
        names: [Option<HeaderName>; SLOTS],
        values: [Option<HeaderValue>; SLOTS],
    }

    thread_local! {
        static RECENT: RefCell<Recent> = const {
            RefCell::new(Recent {
                names: [const { None }; SLOTS],
                values: [const { None }; SLOTS],
            })
        };
    }

    /// Runs `f` with this thread's recent names and values (one lookup for a whole header
    /// list).
    pub(crate) fn with<R>(f: impl FnOnce(&mut Recent) -> R) -> R {
        RECENT.with(|recent| f(&mut recent.borrow_mut()))
    }

    fn slot(bytes: &[u8]) -> usize {
        (bytes.len() + usize::from(bytes.last().copied().unwrap_or(0))) % SLOTS
    }

    /// The item kept in `slots` for `bytes` if it is equal, else a new one `parse`d (and kept).
    fn shared<T: Clone, E>(
        slots: &mut [Option<T>; SLOTS],
        bytes: &[u8],
        as_bytes: impl Fn(&T) -> &[u8],
        parse: impl FnOnce(&[u8]) -> Result<T, E>,
    ) -> Result<T, E> {
        if bytes.len() > LONGEST {
            return parse(bytes);
        }
        let slot = &mut slots[slot(bytes)];
        if let Some(seen) = slot.as_ref().filter(|seen| as_bytes(seen) == bytes) {
            return Ok(seen.clone());
        }
        let item = parse(bytes)?;
        *slot = Some(item.clone());
        Ok(item)
    }

    impl Recent {
        /// [`HeaderName::from_bytes`], shared with the last equal name seen.
        pub(crate) fn name(&mut self, bytes: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
            fn as_bytes(name: &HeaderName) -> &[u8] {
                name.as_str().as_bytes()
            }
            shared(&mut self.names, bytes, as_bytes, HeaderName::from_bytes)
        }

        /// [`HeaderValue::from_bytes`], shared with the last equal value seen.
        pub(crate) fn value(&mut self, bytes: &[u8]) -> Result<HeaderValue, InvalidHeaderValue> {
            shared(
                &mut self.values,
                bytes,
                HeaderValue::as_bytes,
                HeaderValue::from_bytes,
            )
        }
    }
}

/// Whether `value` is free of control characters (tab is fine), as [`HeaderValue`] requires.
fn visible(value: &[u8]) -> bool {
    // A fold, not `all`: no branch per byte.
    value.iter().fold(true, |ok, &b| ok & VALUE[usize::from(b)])
}

/// What a header value may be made of, by byte.
const VALUE: [bool; 256] = {
    let mut table = [true; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b == 0x09;
        b += 1;
    }
    table[0x7f] = false;
    table
};

/// RFC 9110's `tchar`, by byte: what a header name may be made of.
const TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'^'..=b'`' | b'|' | b'~');
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_agrees_with_header_value_on_every_byte_and_position() {
        for len in [1, 7, 8, 9, 16, 23] {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut value = vec![b'a'; len];
                    value[at] = b;
                    assert_eq!(
                        visible(&value),
                        HeaderValue::from_bytes(&value).is_ok(),
                        "byte {b:#04x} at {at} of {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn visible_agrees_with_header_value_on_mixed_values() {
        // Bytes on either side of every boundary, mixed at random (a fixed sequence).
        const EDGES: [u8; 12] = [
            0x00, 0x01, 0x08, 0x09, 0x0a, 0x1f, 0x20, 0x21, 0x7e, 0x7f, 0x80, 0xff,
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..50_000 {
            let len = (next() % 40) as usize;
            let value: Vec<u8> = (0..len)
                .map(|_| match next() % 4 {
                    0 => EDGES[(next() % 12) as usize],
                    1 => (next() % 256) as u8,
                    _ => b'a' + (next() % 26) as u8,
                })
                .collect();
            assert_eq!(
                visible(&value),
                HeaderValue::from_bytes(&value).is_ok(),
                "{value:02x?}"
            );
        }
    }

    #[test]
    fn recent_names_and_values_are_shared_and_checked_like_new_ones() {
        let long = vec![b'x'; 100];
        recent::with(|recent| {
            // Slot collisions, repeats, a name in upper case, one too long to keep.
            let names: [&[u8]; 6] = [
                b"content-type",
                b"x-a",
                b"x-b",
                b"content-type",
                b"X-A",
                &long,
            ];
            for _ in 0..3 {
                for name in names {
                    let got = recent.name(name).expect("valid");
                    assert_eq!(got, http::HeaderName::from_bytes(name).expect("valid"));
                }
            }
            let values: [&[u8]; 5] = [b"text/plain", b"a", b"b\xff", b"text/plain", &long];
            for _ in 0..3 {
                for value in values {
                    assert_eq!(recent.value(value).expect("valid").as_bytes(), value);
                }
            }
            assert!(recent.name(b"bad name").is_err());
            assert!(
                recent.name(b"bad name").is_err(),
                "an invalid name is never kept"
            );
            assert!(recent.value(b"line\r\nbreak").is_err());
            assert!(recent.value(b"line\r\nbreak").is_err());
        });
    }

    #[test]
    fn raw_headers_are_checked_copied_and_parsed_on_demand() {
        let pairs: [(&[u8], &[u8]); 3] = [
            (b"host", b"example.com"),
            (b"x-dup", b"one"),
            (b"x-dup", b"two\tthree"),
        ];
        let headers = Headers::from_raw(pairs.iter().copied()).expect("valid");
        let map = headers.map();
        assert_eq!(map.len(), 3);
        assert_eq!(map["host"], "example.com");
        let dups: Vec<_> = map.get_all("x-dup").iter().collect();
        assert_eq!(dups, ["one", "two\tthree"]);

        let bad_name: [(&[u8], &[u8]); 1] = [(b"bad name", b"v")];
        let err = Headers::from_raw(bad_name.iter().copied()).expect_err("refused");
        assert_eq!(err, "invalid header name \"bad name\"");
        let bad_value: [(&[u8], &[u8]); 1] = [(b"x-a", b"line\r\nbreak")];
        let err = Headers::from_raw(bad_value.iter().copied()).expect_err("refused");
        assert_eq!(err, "invalid value for header x-a");
    }
}
