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
