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
use crate::ffi::panic::catch;

/// The stream type every body crosses the boundary as.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

unsafe extern "C" fn poll_stream<S>(state: *mut c_void, cx: *mut FfiContext<'_>) -> AbiChunkPoll
where
    S: Stream<Item = Result<Bytes, BodyError>>,
{
    let polled = catch(|| {
        // SAFETY: `state` is the `Box<S>` made by `AbiBody::streaming`, which never moves it,
        // alive until the body's `drop`; `cx` is valid for this call (the ABI's poll contract).
        let (stream, cx) = unsafe { (Pin::new_unchecked(&mut *state.cast::<S>()), &mut *cx) };
        cx.with_context(|cx| stream.poll_next(cx))
    });
    match polled {
        Ok(Poll::Pending) => chunk(CHUNK_PENDING, AbiBuf::empty()),
        Ok(Poll::Ready(None)) => chunk(CHUNK_END, AbiBuf::empty()),
        Ok(Poll::Ready(Some(Ok(data)))) => chunk(CHUNK_DATA, AbiBuf::from_bytes(data)),
        Ok(Poll::Ready(Some(Err(err)))) => chunk(CHUNK_ERROR, AbiBuf::from_string(err.to_string())),
        Err(panic) => chunk(
            CHUNK_ERROR,
            AbiBuf::from_string(format!("body stream panicked: {panic}")),
        ),
    }
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

unsafe extern "C" fn poll_full<X>(state: *mut c_void, _cx: *mut FfiContext<'_>) -> AbiChunkPoll {
    // Nothing here can panic: no `catch` needed.
    let full = state.cast::<FullBody<X>>().cast_const();
    // SAFETY: `state` is an `Arc<FullBody<X>>` reference made by `FullBody::share`, alive until
    // `release_full` drops the body's reference.
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
}

/// Drops one reference to a [`FullBody`]: the body's (its `drop`), its chunk's or its
/// response's (their `release`).
pub(super) unsafe extern "C" fn release_full<X>(state: *mut c_void) {
    let full = state.cast::<FullBody<X>>().cast_const();
    // SAFETY: `state` came from `Arc::into_raw` in `FullBody::share` or
    // `AbiResponse::with_full_body`, and each reference is released once.
    let last = catch(|| unsafe { Arc::decrement_strong_count(full) });
    // A destructor that panics leaks instead of unwinding into the other side.
    let _ = last;
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
