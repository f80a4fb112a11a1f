//! Headers: an upstream response's, received across the boundary and turned into a
//! [`HeaderMap`] only when asked for, and the conversion every header setter of the SDK shares.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use crate::error::HeaderError;

use crate::ffi::response::LentHeaders;

/// An upstream response's headers, as the host lends them: read in place, and turned into a
/// [`HeaderMap`] the first time the app asks for it. An app that reads no header pays for no
/// copy and no map; the host's copy is freed when this is dropped.
#[derive(Debug)]
pub(crate) enum Headers {
    /// Lent by the host until dropped.
    Lent {
        headers: LentHeaders,
        map: std::sync::OnceLock<HeaderMap>,
    },
    /// A map already (the mock host's fetch responses).
    #[cfg(feature = "testing")]
    Map(HeaderMap),
}

impl Headers {
    pub(crate) fn lent(headers: LentHeaders) -> Self {
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

/// How a setter adds a header to its map.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Add {
    /// Replacing earlier values ([`HeaderMap::insert`]).
    Insert,
    /// After earlier values ([`HeaderMap::append`]).
    Append,
}

/// What every header setter of the SDK does: converts `name` and `value` ([`header`]) and
/// adds them to `map`, or keeps the error in `error` unless an earlier one is there.
pub(crate) fn set<K, V>(
    map: &mut HeaderMap,
    error: &mut Option<Box<HeaderError>>,
    add: Add,
    name: K,
    value: V,
) where
    K: TryInto<HeaderName>,
    K::Error: Into<http::Error>,
    V: TryInto<HeaderValue>,
    V::Error: Into<http::Error>,
{
    match header(name, value) {
        Ok((name, value)) => match add {
            Add::Insert => {
                map.insert(name, value);
            }
            Add::Append => {
                map.append(name, value);
            }
        },
        Err(err) => {
            error.get_or_insert(Box::new(err));
        }
    }
}

/// Converts a header as `http`'s builders do: `name` and `value` may be anything they accept
/// (`&str`, `String`, `&[u8]`, [`HeaderName`], [`HeaderValue`], numbers for values...).
fn header<K, V>(name: K, value: V) -> Result<(HeaderName, HeaderValue), HeaderError>
where
    K: TryInto<HeaderName>,
    K::Error: Into<http::Error>,
    V: TryInto<HeaderValue>,
    V::Error: Into<http::Error>,
{
    let name = name.try_into().map_err(|e| HeaderError::name(e.into()))?;
    let value = match value.try_into() {
        Ok(value) => value,
        Err(e) => return Err(HeaderError::value(name, e.into())),
    };
    Ok((name, value))
}
