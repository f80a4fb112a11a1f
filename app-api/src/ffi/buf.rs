//! Borrowed bytes ([`AbiStr`]) and owned buffers ([`AbiBuf`]), and the chunks of a body read
//! where the other side has them ([`ForeignChunk`]).

use std::ffi::c_void;
use std::fmt;
use std::ptr;

use bytes::Bytes;

use crate::abi::{AbiBuf, AbiStr};

/// An error found while reading what the other side handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundaryError(pub String);

impl fmt::Display for BoundaryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BoundaryError {}

impl AbiStr {
    /// Borrows `bytes` for the duration of a call.
    pub fn new(bytes: &[u8]) -> Self {
        AbiStr {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// A `'static` string (descriptor fields).
    pub const fn from_static(s: &'static str) -> Self {
        AbiStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// Reads the bytes.
    ///
    /// # Safety
    /// `ptr[..len]` must be readable for `'a` (the ABI's borrowed contract), or `len` must be 0.
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees `ptr[..len]` is readable for `'a`.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }

    /// Reads the bytes as UTF-8, naming `what` in the error.
    ///
    /// # Safety
    /// As for [`AbiStr::as_bytes`].
    pub unsafe fn to_str<'a>(&self, what: &str) -> Result<&'a str, BoundaryError> {
        // SAFETY: forwarded to the caller.
        let bytes = unsafe { self.as_bytes() };
        std::str::from_utf8(bytes).map_err(|_| BoundaryError(format!("{what} is not UTF-8")))
    }
}

ffi_fn! {
    /// Frees a value [`boxed_owner`] or [`owner_of`] handed over. A destructor that panics
    /// leaks instead of unwinding into the other side.
    ///
    /// # Safety
    /// `owner` came from `Box::<T>::into_raw` in this module and is released once.
    pub(super) unsafe fn release_boxed<T>(owner: *mut c_void) {
        // SAFETY: the caller's promise.
        drop(unsafe { Box::from_raw(owner.cast::<T>()) })
    } ?= |_| ()
}

/// Moves `value` to the heap and returns the `(owner, release)` pair that frees it.
pub(super) fn boxed_owner<T>(value: T) -> (*mut c_void, Option<unsafe extern "C" fn(*mut c_void)>) {
    owner_of(Box::new(value))
}

/// The `(owner, release)` pair that frees `boxed`.
pub(super) fn owner_of<T>(
    boxed: Box<T>,
) -> (*mut c_void, Option<unsafe extern "C" fn(*mut c_void)>) {
    (Box::into_raw(boxed).cast(), Some(release_boxed::<T>))
}

impl AbiBuf {
    /// No bytes, nothing to release.
    pub const fn empty() -> Self {
        AbiBuf {
            ptr: ptr::null(),
            len: 0,
            owner: ptr::null_mut(),
            release: None,
        }
    }

    /// Hands `bytes` over without copying; the receiver's `release` drops them here.
    pub fn from_bytes(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            return AbiBuf::empty();
        }
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        let (owner, release) = boxed_owner(bytes);
        AbiBuf {
            ptr,
            len,
            owner,
            release,
        }
    }

    /// Hands a UTF-8 message over.
    pub fn from_string(message: String) -> Self {
        AbiBuf::from_bytes(Bytes::from(message))
    }

    /// Takes ownership of a received buffer as [`Bytes`] without copying; dropping the `Bytes`
    /// calls the producer's `release`.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's owned-buffer contract and not be released elsewhere.
    pub unsafe fn into_bytes(self) -> Bytes {
        ForeignBuf(self).into_bytes()
    }

    /// Copies a received message into a `String` (lossily) and releases the buffer.
    ///
    /// # Safety
    /// As for [`AbiBuf::into_bytes`].
    pub unsafe fn into_string_lossy(self) -> String {
        // SAFETY: forwarded to the caller.
        let bytes = unsafe { self.into_bytes() };
        if bytes.is_empty() {
            // Every successful outcome carries an empty message.
            return String::new();
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// A received [`AbiBuf`] that releases itself when dropped.
pub(super) struct ForeignBuf(pub(super) AbiBuf);

impl AsRef<[u8]> for ForeignBuf {
    fn as_ref(&self) -> &[u8] {
        let view = AbiStr {
            ptr: self.0.ptr,
            len: self.0.len,
        };
        // SAFETY: an owned buffer's bytes stay readable until it is released, which only `Drop`
        // does.
        unsafe { view.as_bytes() }
    }
}

impl ForeignBuf {
    /// The buffer as [`Bytes`], without copying: dropping them releases it. An empty buffer
    /// with nothing to release needs no owner.
    fn into_bytes(self) -> Bytes {
        if self.0.release.is_none() && self.as_ref().is_empty() {
            return Bytes::new();
        }
        Bytes::from_owner(self)
    }
}

impl Drop for ForeignBuf {
    fn drop(&mut self) {
        if let Some(release) = self.0.release {
            // SAFETY: the owned-buffer contract: call `release(owner)` exactly once.
            unsafe { release(self.0.owner) };
        }
    }
}

/// A chunk of a body received from the other side, read where it is and released when dropped.
/// Making it a [`Bytes`] ([`ForeignChunk::into_bytes`]) costs an allocation; a server that
/// only writes the chunk out can take it as it is ([`ForeignBody::poll_chunk_in_place`]).
///
/// [`ForeignBody::poll_chunk_in_place`]: super::body::ForeignBody::poll_chunk_in_place
#[derive(Debug)]
pub struct ForeignChunk {
    buf: ForeignBuf,
    /// How much of it has been consumed ([`bytes::Buf::advance`]).
    at: usize,
}

impl ForeignChunk {
    /// A chunk received whole.
    pub(super) fn new(buf: ForeignBuf) -> Self {
        ForeignChunk { buf, at: 0 }
    }

    /// The chunk as [`Bytes`], without copying it.
    pub fn into_bytes(self) -> Bytes {
        let mut bytes = self.buf.into_bytes();
        bytes::Buf::advance(&mut bytes, self.at);
        bytes
    }
}

impl bytes::Buf for ForeignChunk {
    fn remaining(&self) -> usize {
        self.buf.as_ref().len() - self.at
    }

    fn chunk(&self) -> &[u8] {
        &self.buf.as_ref()[self.at..]
    }

    fn advance(&mut self, cnt: usize) {
        assert!(cnt <= self.remaining(), "advanced past the end of a chunk");
        self.at += cnt;
    }
}

impl fmt::Debug for ForeignBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForeignBuf")
            .field("len", &self.0.len)
            .finish_non_exhaustive()
    }
}

/// UTF-8 text in [`Bytes`]: a WebSocket text message's payload, handed between the host and
/// the app without copying (the host's text arrives in its own buffer, and echoing it back
/// hands that same buffer over again). Read it as a `&str` through `Deref`, or take the
/// bytes back with [`into_bytes`](Utf8Bytes::into_bytes).
///
/// ```
/// use berth_app::Utf8Bytes;
/// let text = Utf8Bytes::from("héllo");
/// assert_eq!(text.len(), 6);
/// assert!(text.starts_with("hé"));
/// assert_eq!(text, "héllo");
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// A `'static` string, without copying.
    pub const fn from_static(text: &'static str) -> Self {
        Utf8Bytes(Bytes::from_static(text.as_bytes()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checked (or was given) valid UTF-8, and `Bytes` never
        // changes what it holds.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The text's bytes, without copying.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// `bytes` as text, without copying when they are UTF-8; invalid sequences are replaced
    /// (copying) otherwise. For what the other side promised is UTF-8.
    pub fn from_bytes_lossy(bytes: Bytes) -> Self {
        match std::str::from_utf8(&bytes) {
            Ok(_) => Utf8Bytes(bytes),
            Err(_) => Utf8Bytes::from(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = std::str::Utf8Error;

    /// `bytes` as text, without copying, if they are UTF-8.
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Utf8Bytes(bytes))
    }
}

impl From<String> for Utf8Bytes {
    fn from(text: String) -> Self {
        Utf8Bytes(Bytes::from(text))
    }
}

impl From<&str> for Utf8Bytes {
    /// Copies the text.
    fn from(text: &str) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl From<Utf8Bytes> for Bytes {
    fn from(text: Utf8Bytes) -> Self {
        text.0
    }
}

impl std::ops::Deref for Utf8Bytes {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Utf8Bytes {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Utf8Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Utf8Bytes {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use std::ptr;
    use std::task::{Context, Poll, Waker};

    use bytes::Bytes;

    use super::*;
    use crate::abi::*;
    use crate::ffi::test_support::*;

    #[test]
    fn abi_str_reads_back_and_null_is_empty() {
        let text = "héllo";
        let abi = AbiStr::new(text.as_bytes());
        // SAFETY: `text` outlives the reads.
        unsafe {
            assert_eq!(abi.as_bytes(), text.as_bytes());
            assert_eq!(abi.to_str("greeting"), Ok(text));
        }
        let null = AbiStr {
            ptr: ptr::null(),
            len: 0,
        };
        // SAFETY: null with length 0 is the ABI's empty string.
        assert_eq!(unsafe { null.as_bytes() }, b"");

        let bad = [0xff_u8, 0xfe];
        // SAFETY: `bad` outlives the read.
        let err = unsafe { AbiStr::new(&bad).to_str("path") };
        assert_eq!(err, Err(BoundaryError("path is not UTF-8".to_owned())));
    }

    #[test]
    fn buf_from_string_reads_back() {
        let buf = AbiBuf::from_string("héllo, wörld".to_owned());
        assert!(buf.release.is_some());
        // SAFETY: just made, received once.
        assert_eq!(unsafe { buf.into_string_lossy() }, "héllo, wörld");

        let empty = AbiBuf::from_string(String::new());
        assert!(empty.release.is_none() && empty.ptr.is_null() && empty.len == 0);
        // SAFETY: as above.
        assert_eq!(unsafe { empty.into_string_lossy() }, "");
    }

    #[test]
    fn buf_into_string_lossy_replaces_invalid_utf8() {
        let buf = AbiBuf::from_bytes(Bytes::from_static(b"ok \xff\xfe"));
        // SAFETY: just made, received once.
        assert_eq!(unsafe { buf.into_string_lossy() }, "ok \u{fffd}\u{fffd}");
    }

    #[test]
    fn buf_is_zero_copy_and_released_exactly_once() {
        let drops = Drops::default();
        let bytes = drops.bytes(b"owned by the producer");
        let data_ptr = bytes.as_ptr();
        let buf = AbiBuf::from_bytes(bytes);
        assert_eq!(buf.ptr, data_ptr, "no copy on the way out");
        assert_eq!(drops.count(), 0);

        // SAFETY: just made, received once.
        let received = unsafe { buf.into_bytes() };
        assert_eq!(received.as_ptr(), data_ptr, "no copy on the way in");
        assert_eq!(received, "owned by the producer");
        let clone = received.clone();
        drop(received);
        assert_eq!(drops.count(), 0, "a clone still holds the buffer");
        drop(clone);
        assert_eq!(drops.count(), 1);
    }

    #[test]
    fn a_chunk_read_in_place_is_released_once_whether_written_out_or_made_bytes() {
        use bytes::Buf as _;
        let drops = Drops::default();
        let stream = stream_of(vec![
            Ok(drops.bytes(b"first chunk")),
            Ok(drops.bytes(b"second")),
        ]);
        let mut body = receive(AbiBody::from_stream(stream, None));
        let mut cx = Context::from_waker(Waker::noop());

        let Poll::Ready(Some(Ok(mut first))) = body.poll_chunk_in_place(&mut cx) else {
            panic!("a chunk");
        };
        assert_eq!(first.remaining(), 11);
        first.advance(6);
        assert_eq!(first.chunk(), b"chunk");
        // Made `Bytes` after a partial write: only what is left.
        let rest = first.into_bytes();
        assert_eq!(rest, "chunk");
        assert_eq!(drops.count(), 0, "the Bytes holds the chunk");
        drop(rest);
        assert_eq!(drops.count(), 1);

        let Poll::Ready(Some(Ok(mut second))) = body.poll_chunk_in_place(&mut cx) else {
            panic!("a chunk");
        };
        second.advance(6);
        assert_eq!(second.remaining(), 0);
        drop(second);
        assert_eq!(drops.count(), 2);
        assert!(matches!(
            body.poll_chunk_in_place(&mut cx),
            Poll::Ready(None)
        ));
    }

    #[test]
    fn utf8_bytes_check_once_and_copy_only_what_is_not_utf8() {
        let good = Bytes::from_static("grüße".as_bytes());
        let ptr = good.as_ptr();
        let text = Utf8Bytes::from_bytes_lossy(good);
        assert_eq!((text.as_str(), text.as_ptr()), ("grüße", ptr));
        let bad = Utf8Bytes::from_bytes_lossy(Bytes::from_static(b"a\xffb"));
        assert_eq!(bad, "a\u{fffd}b");
        assert!(Utf8Bytes::try_from(Bytes::from_static(b"\xff")).is_err());
        assert_eq!(Utf8Bytes::from_static("s").into_bytes(), "s");
        assert_eq!(
            format!("{:?} {}", Utf8Bytes::from("q"), Utf8Bytes::from("q")),
            "\"q\" q"
        );
    }

    #[test]
    fn static_buf_without_release_is_read_in_place() {
        static TEXT: &[u8] = b"static";
        let buf = AbiBuf {
            ptr: TEXT.as_ptr(),
            len: TEXT.len(),
            owner: ptr::null_mut(),
            release: None,
        };
        // SAFETY: static data, nothing to release.
        assert_eq!(unsafe { buf.into_bytes() }, "static");
    }
}
