//! Request and response bodies: streams of byte chunks.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use futures_util::StreamExt as _;

use crate::abi::AbiBody;
use crate::error::BodyError;
use crate::ffi::body::{ChunkStream, ForeignBody};

/// A body: a stream of byte chunks, read as it arrives.
///
/// Inbound request bodies and outbound responses stream from the host as the app reads them
/// (the host reads from the network only when the app asks for the next chunk). Response bodies
/// the app builds can be a single buffer or any [`Stream`] of chunks.
pub struct Body {
    kind: Kind,
}

enum Kind {
    Empty,
    Full(Bytes),
    Stream(ChunkStream),
    Foreign(ForeignBody),
}

impl Body {
    /// No bytes.
    pub fn empty() -> Self {
        Body { kind: Kind::Empty }
    }

    /// A body of chunks produced by `stream`, sent as the host asks for them.
    pub fn from_stream<S>(stream: S) -> Self
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
    {
        Body {
            kind: Kind::Stream(Box::pin(stream)),
        }
    }

    pub(crate) fn from_foreign(body: ForeignBody) -> Self {
        Body {
            kind: Kind::Foreign(body),
        }
    }

    /// The exact length in bytes, when known in advance.
    pub fn len_hint(&self) -> Option<u64> {
        match &self.kind {
            Kind::Empty => Some(0),
            Kind::Full(bytes) => Some(bytes.len() as u64),
            Kind::Stream(_) => None,
            Kind::Foreign(body) => body.len_hint(),
        }
    }

    /// The next chunk, or `None` at the end of the body.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, BodyError>> {
        self.next().await
    }

    /// Reads the whole body into memory.
    pub async fn bytes(self) -> Result<Bytes, BodyError> {
        self.bytes_limited(usize::MAX).await
    }

    /// Reads the whole body into memory, failing once it exceeds `limit` bytes.
    pub async fn bytes_limited(mut self, limit: usize) -> Result<Bytes, BodyError> {
        if let Kind::Full(bytes) = &self.kind {
            if bytes.len() > limit {
                return Err(too_large(limit));
            }
        }
        let mut first: Option<Bytes> = None;
        let mut rest = BytesMut::new();
        while let Some(chunk) = self.chunk().await {
            let chunk = chunk?;
            let total = first.as_ref().map_or(0, Bytes::len) + rest.len() + chunk.len();
            if total > limit {
                return Err(too_large(limit));
            }
            match &first {
                None => first = Some(chunk),
                Some(head) => {
                    if rest.is_empty() {
                        rest.extend_from_slice(head);
                    }
                    rest.extend_from_slice(&chunk);
                }
            }
        }
        Ok(if rest.is_empty() {
            first.unwrap_or_default()
        } else {
            rest.freeze()
        })
    }

    /// Reads the whole body as UTF-8 text (invalid sequences replaced).
    pub async fn text(self) -> Result<String, BodyError> {
        let bytes = self.bytes().await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Reads the whole body as JSON.
    #[cfg(feature = "json")]
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, BodyError> {
        from_json(&self.bytes().await?)
    }

    /// The bytes of a body held whole in memory (empty for an empty body), or the body itself.
    pub(crate) fn into_full(self) -> Result<Bytes, Body> {
        match self.kind {
            Kind::Empty => Ok(Bytes::new()),
            Kind::Full(bytes) => Ok(bytes),
            kind => Err(Body { kind }),
        }
    }

    pub(crate) fn into_abi(self) -> AbiBody {
        match self.kind {
            Kind::Empty => AbiBody::empty(),
            Kind::Full(bytes) => AbiBody::full(bytes),
            Kind::Stream(stream) => AbiBody::from_stream(stream, None),
            // A body that came from the host goes back untouched: the host polls its own code.
            Kind::Foreign(body) => body.into_abi(),
        }
    }
}

/// Parses a whole body as JSON.
#[cfg(feature = "json")]
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    serde_json::from_slice(bytes).map_err(|e| BodyError::new(format!("invalid JSON: {e}")))
}

fn too_large(limit: usize) -> BodyError {
    BodyError::new(format!("body is larger than the limit of {limit} bytes"))
}

impl Stream for Body {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(_) => {
                let Kind::Full(bytes) = std::mem::replace(&mut this.kind, Kind::Empty) else {
                    unreachable!("matched Full above")
                };
                Poll::Ready((!bytes.is_empty()).then_some(Ok(bytes)))
            }
            Kind::Stream(stream) => stream.poll_next_unpin(cx),
            Kind::Foreign(body) => body.poll_chunk(cx),
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Full(_) => "full",
            Kind::Stream(_) => "stream",
            Kind::Foreign(_) => "host stream",
        };
        f.debug_struct("Body")
            .field("kind", &kind)
            .field("len_hint", &self.len_hint())
            .finish()
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body {
            kind: Kind::Full(bytes),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Body::from(Bytes::from(bytes))
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Body::from(Bytes::from(text))
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Body::from(Bytes::from_static(text.as_bytes()))
    }
}

impl From<&'static [u8]> for Body {
    fn from(bytes: &'static [u8]) -> Self {
        Body::from(Bytes::from_static(bytes))
    }
}
