//! Headers received across the boundary, turned into a [`HeaderMap`] only when asked for.

use http::HeaderMap;

/// An upstream response's headers, as the host lends them: read in place, and turned into a
/// [`HeaderMap`] the first time the app asks for it. An app that reads no header pays for no
/// copy and no map; the host's copy is freed when this is dropped.
#[derive(Debug)]
pub(crate) enum Headers {
    /// Lent by the host until dropped.
    Lent {
        headers: crate::ffi::LentHeaders,
        map: std::sync::OnceLock<HeaderMap>,
    },
    /// A map already (the mock host's fetch responses).
    #[cfg(feature = "testing")]
    Map(HeaderMap),
}

impl Headers {
    pub(crate) fn lent(headers: crate::ffi::LentHeaders) -> Self {
        Headers::Lent {
            headers,
            map: std::sync::OnceLock::new(),
        }
    }

    /// Headers that are a map already (the mock host's fetch responses).
    #[cfg(feature = "testing")]
    pub(crate) fn from_map(map: HeaderMap) -> Self {
        Headers::Map(map)
    }

    pub(crate) fn map(&self) -> &HeaderMap {
        match self {
            Headers::Lent { headers, map } => map.get_or_init(|| headers.to_map()),
            #[cfg(feature = "testing")]
            Headers::Map(map) => map,
        }
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

    /// The only headers whose values are kept: standard ones whose values are the same for
    /// many answers. Any other value (a cookie, a token, a tag) is not kept past its answer.
    static REPEATED: [HeaderName; 8] = [
        http::header::CONTENT_TYPE,
        http::header::CACHE_CONTROL,
        http::header::CONTENT_ENCODING,
        http::header::VARY,
        http::header::SERVER,
        http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::header::STRICT_TRANSPORT_SECURITY,
    ];

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
        /// Whether a value equal to `bytes` is kept.
        #[cfg(test)]
        pub(crate) fn keeps(&self, bytes: &[u8]) -> bool {
            self.values
                .iter()
                .flatten()
                .any(|value| value.as_bytes() == bytes)
        }

        /// [`HeaderName::from_bytes`], shared with the last equal name seen.
        pub(crate) fn name(&mut self, bytes: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
            fn as_bytes(name: &HeaderName) -> &[u8] {
                name.as_str().as_bytes()
            }
            shared(&mut self.names, bytes, as_bytes, HeaderName::from_bytes)
        }

        /// [`HeaderValue::from_bytes`] for header `name`, shared with the last equal value seen
        /// when `name` is one of the [`REPEATED`].
        pub(crate) fn value(
            &mut self,
            name: &HeaderName,
            bytes: &[u8],
        ) -> Result<HeaderValue, InvalidHeaderValue> {
            if !REPEATED.contains(name) {
                return HeaderValue::from_bytes(bytes);
            }
            shared(
                &mut self.values,
                bytes,
                HeaderValue::as_bytes,
                HeaderValue::from_bytes,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let set_cookie = http::header::SET_COOKIE;
            for _ in 0..3 {
                for value in values {
                    for name in [&http::header::CONTENT_TYPE, &set_cookie] {
                        assert_eq!(recent.value(name, value).expect("valid").as_bytes(), value);
                    }
                }
            }
            // A cookie's value is never kept, a content type's is.
            let kept = |recent: &recent::Recent, value: &[u8]| recent.keeps(value);
            recent.value(&set_cookie, b"session=secret").expect("valid");
            assert!(!kept(recent, b"session=secret"));
            recent
                .value(&http::header::CONTENT_TYPE, b"text/html")
                .expect("valid");
            assert!(kept(recent, b"text/html"));
            assert!(recent.name(b"bad name").is_err());
            assert!(
                recent.name(b"bad name").is_err(),
                "an invalid name is never kept"
            );
            let content_type = &http::header::CONTENT_TYPE;
            assert!(recent.value(content_type, b"line\r\nbreak").is_err());
            assert!(recent.value(content_type, b"line\r\nbreak").is_err());
        });
    }
}
