//! Bodies: a stream handed over ([`AbiBody::streaming`]), one buffer handed over whole
//! ([`AbiBody::full`]), and a body received from the other side ([`ForeignBody`]).

use std::ffi::c_void;
use std::pin::Pin;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;

use crate::abi::*;
use crate::error::BodyError;
use crate::ffi::buf::{ForeignBuf, ForeignChunk, boxed_owner};
use crate::ffi::future::ContextExt;

/// The stream type every body crosses the boundary as.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

ffi_fn! {
    /// A streaming body's `poll_chunk`: polls the stream `S`; a panic ends the body with an
    /// error chunk.
    ///
    /// # Safety
    /// The ABI's body contract: `state` is the body's own, until its `drop`; `cx` is valid for
    /// the call.
    unsafe fn poll_stream<S: Stream<Item = Result<Bytes, BodyError>>>(
        state: *mut c_void,
        cx: *mut FfiContext<'_>,
    ) -> AbiChunkPoll {
        // SAFETY: `state` is the `Box<S>` made by `AbiBody::streaming`, which never moves it,
        // alive until the body's `drop`; `cx` is valid for this call (the ABI's poll contract).
        let (stream, cx) = unsafe { (Pin::new_unchecked(&mut *state.cast::<S>()), &mut *cx) };
        match cx.with_context(|cx| stream.poll_next(cx)) {
            Poll::Pending => chunk(CHUNK_PENDING, AbiBuf::empty()),
            Poll::Ready(None) => chunk(CHUNK_END, AbiBuf::empty()),
            Poll::Ready(Some(Ok(data))) => chunk(CHUNK_DATA, AbiBuf::from_bytes(data)),
            Poll::Ready(Some(Err(err))) => chunk(CHUNK_ERROR, AbiBuf::from_string(err.to_string())),
        }
    } ?= |panic| chunk(
        CHUNK_ERROR,
        AbiBuf::from_string(format!("body stream panicked: {panic}")),
    )
}

fn chunk(tag: u32, data: AbiBuf) -> AbiChunkPoll {
    AbiChunkPoll { tag, data }
}

impl AbiBody {
    /// An empty body.
    pub const fn empty() -> Self {
        AbiBody {
            state: ptr::null_mut(),
            poll_chunk: None,
            drop: None,
            len_hint: 0,
        }
    }

    /// Hands a stream over; the receiver polls it through this module's glue. `len_hint` is the
    /// exact total length when known.
    pub fn from_stream(stream: ChunkStream, len_hint: Option<u64>) -> Self {
        Self::streaming(stream, len_hint)
    }

    /// [`AbiBody::from_stream`] for a stream of any type, boxed as it is: one allocation where
    /// a [`ChunkStream`] (itself a box) takes two.
    pub fn streaming<S>(stream: S, len_hint: Option<u64>) -> Self
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
    {
        let (state, drop) = boxed_owner(stream);
        AbiBody {
            state,
            poll_chunk: Some(poll_stream::<S>),
            drop,
            len_hint: len_hint.unwrap_or(LEN_UNKNOWN),
        }
    }

    /// Hands one buffer over as a stream of one chunk. The body's state and the chunk's owner
    /// are one reference-counted block, so a whole body costs one allocation.
    pub fn full(data: Bytes) -> Self {
        if data.is_empty() {
            return AbiBody::empty();
        }
        FullBody::share(&Arc::new(FullBody::new(data, ())))
    }
}

/// The state of a body of one chunk: the bytes, whether the chunk has been handed out, and
/// `extra`, anything else that lives as long (a response's header storage). The body, its
/// chunk and the response each hold a reference.
pub(super) struct FullBody<X> {
    data: Bytes,
    taken: AtomicBool,
    pub(super) extra: X,
}

impl<X: Send + Sync + 'static> FullBody<X> {
    pub(super) fn new(data: Bytes, extra: X) -> Self {
        FullBody {
            data,
            taken: AtomicBool::new(false),
            extra,
        }
    }

    /// A body that polls `this` (empty if there is no data), holding a reference of its own.
    pub(super) fn share(this: &Arc<Self>) -> AbiBody {
        if this.data.is_empty() {
            return AbiBody::empty();
        }
        AbiBody {
            state: Arc::into_raw(Arc::clone(this)).cast_mut().cast(),
            poll_chunk: Some(poll_full::<X>),
            drop: Some(release_full::<X>),
            len_hint: this.data.len() as u64,
        }
    }
}

ffi_fn! {
    /// A whole body's `poll_chunk`: its one chunk, then its end.
    ///
    /// # Safety
    /// As for [`poll_stream`]; `state` is an `Arc<FullBody<X>>` reference made by
    /// [`FullBody::share`].
    unsafe fn poll_full<X>(state: *mut c_void, _cx: *mut FfiContext<'_>) -> AbiChunkPoll {
        let full = state.cast::<FullBody<X>>().cast_const();
        // SAFETY: `state` is an `Arc<FullBody<X>>` reference made by `FullBody::share`, alive
        // until `release_full` drops the body's reference.
        let body = unsafe { &*full };
        if body.taken.swap(true, Ordering::Relaxed) {
            return chunk(CHUNK_END, AbiBuf::empty());
        }
        // SAFETY: as above; the chunk gets a reference of its own, released with the chunk.
        unsafe { Arc::increment_strong_count(full) };
        let data = AbiBuf {
            ptr: body.data.as_ptr(),
            len: body.data.len(),
            owner: state,
            release: Some(release_full::<X>),
        };
        chunk(CHUNK_DATA, data)
    } ?= |panic| chunk(
        CHUNK_ERROR,
        AbiBuf::from_string(format!("body stream panicked: {panic}")),
    )
}

ffi_fn! {
    /// Drops one reference to a [`FullBody`]: the body's (its `drop`), its chunk's or its
    /// response's (their `release`). A destructor that panics leaks instead of unwinding into
    /// the other side.
    ///
    /// # Safety
    /// `state` came from `Arc::into_raw` in [`FullBody::share`] or
    /// `AbiResponse::with_full_body`, and each reference is released once.
    pub(super) unsafe fn release_full<X>(state: *mut c_void) {
        // SAFETY: the caller's promise.
        unsafe { Arc::decrement_strong_count(state.cast::<FullBody<X>>().cast_const()) }
    } ?= |_| ()
}

/// A body received from the other side, polled through its C functions. Dropping it calls the
/// producer's `drop` exactly once.
#[derive(Debug)]
pub struct ForeignBody {
    raw: AbiBody,
    done: bool,
    /// Bytes still to come when the producer gave an exact length, else `LEN_UNKNOWN`. At 0 the
    /// body reports its end without another poll: hyper then ends an HTTP/2 stream with the
    /// last data frame instead of sending an empty one after it.
    remaining: u64,
}

impl ForeignBody {
    /// Takes ownership of a received body.
    ///
    /// # Safety
    /// `raw` must satisfy the ABI's body contract and not be used elsewhere afterwards.
    pub unsafe fn from_abi(raw: AbiBody) -> Self {
        let done = raw.poll_chunk.is_none();
        let remaining = raw.len_hint;
        ForeignBody {
            raw,
            done,
            remaining,
        }
    }

    /// Exact length in bytes of what is still to come, when the producer knows it.
    pub fn len_hint(&self) -> Option<u64> {
        (self.remaining != LEN_UNKNOWN).then_some(self.remaining)
    }

    /// Whether the stream has ended (or never had data).
    pub fn is_end(&self) -> bool {
        self.done
    }

    /// Polls for the next chunk; empty chunks are skipped.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        self.poll_chunk_in_place(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(ForeignChunk::into_bytes)))
    }

    /// [`ForeignBody::poll_chunk`], with each chunk left where the producer has it.
    pub fn poll_chunk_in_place(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<ForeignChunk, BodyError>>> {
        loop {
            let Some(poll) = self.raw.poll_chunk.filter(|_| !self.done) else {
                return Poll::Ready(None);
            };
            let state = self.raw.state;
            // SAFETY: the body contract: `poll_chunk(state, cx)` may be called until it returns
            // END or ERROR, which `done` records; `cx` is valid for the call.
            let result = cx.with_ffi_context(|fcx| unsafe { poll(state, fcx) });
            // The returned buffer is ours under the owned-buffer contract: released on drop.
            let data = ForeignBuf(result.data);
            return match result.tag {
                CHUNK_PENDING => Poll::Pending,
                CHUNK_DATA if data.as_ref().is_empty() => continue,
                CHUNK_DATA => {
                    let len = data.as_ref().len() as u64;
                    if self.remaining != LEN_UNKNOWN {
                        self.remaining = self.remaining.saturating_sub(len);
                    }
                    Poll::Ready(Some(Ok(ForeignChunk::new(data))))
                }
                CHUNK_END => {
                    self.done = true;
                    Poll::Ready(None)
                }
                CHUNK_ERROR => {
                    self.done = true;
                    let message = String::from_utf8_lossy(data.as_ref()).into_owned();
                    Poll::Ready(Some(Err(BodyError::new(message))))
                }
                other => {
                    self.done = true;
                    Poll::Ready(Some(Err(BodyError::new(format!(
                        "body stream returned unknown chunk tag {other}"
                    )))))
                }
            };
        }
    }

    /// Gives the raw body back without dropping it (to forward it unchanged).
    pub fn into_abi(self) -> AbiBody {
        let this = std::mem::ManuallyDrop::new(self);
        AbiBody {
            state: this.raw.state,
            poll_chunk: if this.done { None } else { this.raw.poll_chunk },
            drop: this.raw.drop,
            len_hint: this.remaining,
        }
    }
}

impl Drop for ForeignBody {
    fn drop(&mut self) {
        if let Some(drop) = self.raw.drop {
            // SAFETY: the body contract: `drop(state)` exactly once, which `Drop` guarantees.
            unsafe { drop(self.raw.state) };
        }
    }
}

impl Stream for ForeignBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_chunk(cx)
    }
}

impl http_body::Body for ForeignBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        self.get_mut()
            .poll_chunk(cx)
            .map(|chunk| chunk.map(|r| r.map(http_body::Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.len_hint() {
            Some(len) => http_body::SizeHint::with_exact(len),
            None => http_body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use bytes::Bytes;
    use futures_executor::block_on;
    use futures_util::StreamExt as _;
    use futures_util::stream;

    use super::*;

    use crate::error::BodyError;
    use crate::ffi::test_support::*;

    #[test]
    fn empty_body() {
        let body = receive(AbiBody::empty());
        assert!(body.is_end());
        assert_eq!(body.len_hint(), Some(0));
        assert_eq!(read_all(body), (vec![], None));

        // An empty buffer becomes the empty body rather than a stream of one empty chunk.
        let full = AbiBody::full(Bytes::new());
        assert!(full.poll_chunk.is_none() && full.drop.is_none());
    }

    #[test]
    fn single_chunk_body() {
        let drops = Drops::default();
        let abi = AbiBody::full(drops.bytes(b"one chunk"));
        assert_eq!(abi.len_hint, 9);
        let body = receive(abi);
        assert!(!body.is_end());
        assert_eq!(body.len_hint(), Some(9));
        let (chunks, error) = read_all(body);
        assert_eq!(
            (chunks.as_slice(), error),
            (&[Bytes::from("one chunk")][..], None)
        );
        drop(chunks);
        assert_eq!(drops.count(), 1, "the chunk was released exactly once");
    }

    #[test]
    fn many_chunk_body_arrives_in_order() {
        let drops = Drops::default();
        let chunks: Vec<_> = (0..100)
            .map(|i| Ok(Bytes::from(format!("chunk {i};"))))
            .chain([Ok(drops.bytes(b"last"))])
            .collect();
        let expected: String = (0..100).map(|i| format!("chunk {i};")).collect::<String>() + "last";
        let body = receive(AbiBody::from_stream(stream_of(chunks), None));
        assert_eq!(body.len_hint(), None);

        let (chunks, error) = read_all(body);
        assert_eq!(error, None);
        assert_eq!(chunks.len(), 101);
        assert_eq!(chunks.concat(), expected.as_bytes());
        drop(chunks);
        assert_eq!(drops.count(), 1);
    }

    #[test]
    fn len_hint_crosses_the_boundary() {
        let known = receive(AbiBody::from_stream(stream_of(vec![]), Some(42)));
        assert_eq!(known.len_hint(), Some(42));
        assert_eq!(http_body::Body::size_hint(&known).exact(), Some(42));

        let unknown = receive(AbiBody::from_stream(stream_of(vec![]), None));
        assert_eq!(unknown.len_hint(), None);
        assert_eq!(http_body::Body::size_hint(&unknown).exact(), None);
    }

    #[test]
    fn empty_chunks_are_skipped() {
        let chunks = vec![Ok(Bytes::new()), Ok(Bytes::from("a")), Ok(Bytes::new())];
        let (chunks, error) = read_all(receive(AbiBody::from_stream(stream_of(chunks), None)));
        assert_eq!((chunks, error), (vec![Bytes::from("a")], None));
    }

    #[test]
    fn error_chunk_ends_the_body_with_its_message() {
        let chunks = vec![
            Ok(Bytes::from("before")),
            Err(BodyError::new("upstream reset")),
            Ok(Bytes::from("never read")),
        ];
        let mut body = receive(AbiBody::from_stream(stream_of(chunks), None));
        let (first, second, third) = block_on(async {
            let first = body.next().await;
            let second = body.next().await;
            (first, second, body.next().await)
        });
        assert_eq!(first, Some(Ok(Bytes::from("before"))));
        assert_eq!(second, Some(Err(BodyError::new("upstream reset"))));
        assert_eq!(third, None, "nothing is read after an error");
        assert!(body.is_end());
    }

    #[test]
    fn panicking_stream_becomes_an_error_chunk() {
        let panicking = stream::iter([0, 1]).map(|i| match i {
            0 => Ok(Bytes::from("partial")),
            _ => panic!("boom in the body"),
        });
        let abi = AbiBody::from_stream(Box::pin(panicking), None);

        let first = poll_raw(&abi);
        assert_eq!(first.tag, CHUNK_DATA);
        // SAFETY: the chunk is owned by us and released once.
        assert_eq!(unsafe { first.data.into_bytes() }, "partial");

        let second = poll_raw(&abi);
        assert_eq!(second.tag, CHUNK_ERROR);
        // SAFETY: as above.
        let message = unsafe { second.data.into_string_lossy() };
        // Once the plugin's panic hook is installed (by any glue test), the location follows.
        assert!(
            message.starts_with("body stream panicked: boom in the body"),
            "{message:?}"
        );
        drop_raw(abi);
    }

    #[test]
    fn panicking_stream_reads_as_a_body_error() {
        let panicking = stream::iter([0]).map(|_| -> Result<Bytes, BodyError> { panic!("kaboom") });
        let (chunks, error) = read_all(receive(AbiBody::from_stream(Box::pin(panicking), None)));
        assert!(chunks.is_empty());
        let message = error.expect("an error chunk").to_string();
        assert!(
            message.starts_with("body stream panicked: kaboom"),
            "{message:?}"
        );
    }

    #[test]
    fn pending_stream_is_pending_across_the_boundary() {
        let abi = AbiBody::from_stream(Box::pin(stream::pending()), None);
        let polled = poll_raw(&abi);
        assert_eq!(polled.tag, CHUNK_PENDING);
        assert!(polled.data.release.is_none());
        let mut body = receive(abi);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(body.poll_chunk(&mut cx).is_pending());
    }

    #[test]
    fn body_state_is_dropped_exactly_once() {
        // Read to the end, dropped early, and never read: the producer's state is freed once each time.
        for reads in [usize::MAX, 1, 0] {
            let witness = Arc::new(());
            let held = Arc::clone(&witness);
            let chunks = stream::iter(0..3).map(move |i| {
                let _keep = &held;
                Ok(Bytes::from(format!("{i}")))
            });
            let body = receive(AbiBody::from_stream(Box::pin(chunks), None));
            assert_eq!(Arc::strong_count(&witness), 2);
            let taken: Vec<_> = block_on(body.take(reads).collect());
            assert_eq!(taken.len(), reads.min(3));
            assert_eq!(Arc::strong_count(&witness), 1, "after {reads} reads");
        }
    }

    #[test]
    fn foreign_body_forwards_unchanged() {
        let chunks = vec![Ok(Bytes::from("a")), Ok(Bytes::from("b"))];
        let mut body = receive(AbiBody::from_stream(stream_of(chunks), Some(2)));
        assert_eq!(block_on(body.next()), Some(Ok(Bytes::from("a"))));
        // Handing the rest on (e.g. an upstream body streamed into the app's response).
        let forwarded = receive(body.into_abi());
        // What is left, not the original length: a content-length from the old hint would promise
        // a byte that never comes.
        assert_eq!(forwarded.len_hint(), Some(1));
        assert_eq!(read_all(forwarded), (vec![Bytes::from("b")], None));

        // A finished body forwards as a finished one and is never polled again.
        let mut done = receive(AbiBody::full(Bytes::from("x")));
        let _ = block_on((&mut done).collect::<Vec<_>>());
        let again = done.into_abi();
        assert!(again.poll_chunk.is_none() && again.drop.is_some());
        drop_raw(again);
    }

    #[test]
    fn exhausted_body_stays_ended() {
        let mut body = receive(AbiBody::full(Bytes::from("x")));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            body.poll_chunk(&mut cx),
            Poll::Ready(Some(Ok(Bytes::from("x"))))
        );
        assert_eq!(body.poll_chunk(&mut cx), Poll::Ready(None));
        assert!(body.is_end());
        assert_eq!(body.poll_chunk(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn a_body_of_known_length_ends_after_its_last_byte() {
        use http_body::Body as _;
        // hyper asks `is_end_stream` after each chunk: true at the last byte lets HTTP/2 end the
        // stream with that data frame instead of an empty one after it.
        let mut body = receive(AbiBody::full(Bytes::from("xy")));
        assert!(!body.is_end_stream());
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(2));
        assert_eq!(block_on(body.next()), Some(Ok(Bytes::from("xy"))));
        assert!(body.is_end_stream());
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(0));
        // Polled anyway, it ends.
        assert_eq!(block_on(body.next()), None);

        // Without a known length only the producer's END ends it.
        let chunks = vec![Ok(Bytes::from("a"))];
        let mut body = receive(AbiBody::from_stream(stream_of(chunks), None));
        assert_eq!(block_on(body.next()), Some(Ok(Bytes::from("a"))));
        assert!(!body.is_end_stream());
        assert_eq!(block_on(body.next()), None);
        assert!(body.is_end_stream());
    }
}
