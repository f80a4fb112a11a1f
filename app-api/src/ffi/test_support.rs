//! Helpers shared by the tests of the `ffi` modules.

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Waker};

use bytes::Bytes;
use futures_executor::block_on;
use futures_util::StreamExt as _;
use futures_util::stream;
use http::HeaderMap;

use crate::abi::*;
use crate::error::BodyError;
use crate::ffi::body::*;
use crate::ffi::future::*;
use crate::ffi::headers::*;
use crate::ffi::host_handle::*;

/// Counts how many times something was dropped.
#[derive(Clone, Debug, Default)]
pub(super) struct Drops(Arc<AtomicUsize>);

impl Drops {
    pub(super) fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// `bytes` in a `Bytes` whose owner bumps this counter when it is dropped.
    pub(super) fn bytes(&self, bytes: &'static [u8]) -> Bytes {
        Bytes::from_owner(Counted {
            bytes,
            drops: self.clone(),
        })
    }
}

pub(super) struct Counted {
    bytes: &'static [u8],
    drops: Drops,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        self.bytes
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.0.fetch_add(1, Ordering::SeqCst);
    }
}

pub(super) fn receive(body: AbiBody) -> ForeignBody {
    // SAFETY: every body in these tests was just made by `AbiBody`'s constructors and is handed
    // over once.
    unsafe { ForeignBody::from_abi(body) }
}

/// Reads a received body to its end: the chunks, then the error that ended it, if any.
pub(super) fn read_all(body: ForeignBody) -> (Vec<Bytes>, Option<BodyError>) {
    let items: Vec<_> = block_on(body.collect());
    let mut chunks = Vec::new();
    let mut error = None;
    for item in items {
        match item {
            Ok(chunk) => chunks.push(chunk),
            Err(err) => error = Some(err),
        }
    }
    (chunks, error)
}

/// Polls a raw body once, the way the receiving side does.
pub(super) fn poll_raw(body: &AbiBody) -> AbiChunkPoll {
    let poll = body.poll_chunk.expect("a body with a stream");
    let mut cx = Context::from_waker(Waker::noop());
    // SAFETY: `state` is alive (the body has not been dropped) and `cx` outlives the call.
    cx.with_ffi_context(|fcx| unsafe { poll(body.state, fcx) })
}

pub(super) fn drop_raw(body: AbiBody) {
    drop(receive(body));
}

/// What an app gets from `Host::fetch` when the host answers with `outcome`.
pub(super) fn fetch_result(
    outcome: AbiFetchOutcome,
    buffer_limit: Option<u64>,
) -> Result<crate::FetchResponse, crate::FetchError> {
    crate::host::fetch_result(block_on(HostFetch::ready(outcome)), buffer_limit)
}

pub(super) fn stream_of(chunks: Vec<Result<Bytes, BodyError>>) -> ChunkStream {
    Box::pin(stream::iter(chunks))
}

/// A response with headers borrowed from `map`, whose storage adds one to `releases` when it
/// is released. Each test counts in a static of its own: tests run at once.
pub(super) fn counted_response(
    releases: &'static AtomicUsize,
    status: u16,
    map: &'static HeaderMap,
    body: AbiBody,
) -> AbiResponse {
    let storage = Box::new((HeaderList::new(map), releases));
    AbiResponse {
        status,
        headers: storage.0.as_abi(),
        body,
        owner: Box::into_raw(storage).cast(),
        release: Some(count_release),
    }
}

/// # Safety
/// `owner` is the box made in [`counted_response`], released once.
unsafe extern "C" fn count_release(owner: *mut c_void) {
    // SAFETY: `owner` is the box made in `counted_response`, released once.
    let storage = unsafe { Box::from_raw(owner.cast::<(HeaderList, &'static AtomicUsize)>()) };
    storage.1.fetch_add(1, Ordering::SeqCst);
}

/// A fake host socket: an echo buffer (what is written is read back; an empty buffer reads as
/// the end of the stream), which records its TLS upgrade and counts its closes in `closes`.
pub(super) struct FakeSocket {
    echo: std::collections::VecDeque<u8>,
    /// The server name of the TLS upgrade, if there was one.
    tls: Option<String>,
    closes: &'static AtomicUsize,
}

/// An open fake socket, in ABI form.
pub(super) fn fake_socket(tls: Option<String>, closes: &'static AtomicUsize) -> AbiSocket {
    let state = FakeSocket {
        echo: std::collections::VecDeque::new(),
        tls,
        closes,
    };
    AbiSocket {
        state: Box::into_raw(Box::new(state)).cast(),
        vtable: &FAKE_SOCKET_VTABLE,
    }
}

static FAKE_SOCKET_VTABLE: AbiSocketVTable = AbiSocketVTable {
    size: std::mem::size_of::<AbiSocketVTable>(),
    poll_read: fake_socket_read,
    poll_write: fake_socket_write,
    poll_flush: fake_socket_ready,
    poll_shutdown: fake_socket_ready,
    start_tls: fake_socket_start_tls,
    peer_addr: fake_socket_peer_addr,
    drop: fake_socket_drop,
};

fn fake_state<'a>(state: *mut c_void) -> &'a mut FakeSocket {
    // SAFETY: `state` is a live `FakeSocket` made by `fake_socket`, used one call at a time
    // (the socket contract the plugin side keeps).
    unsafe { &mut *state.cast::<FakeSocket>() }
}

/// # Safety
/// The socket contract, which the plugin side under test keeps.
unsafe extern "C" fn fake_socket_read(
    state: *mut c_void,
    _cx: *mut FfiContext<'_>,
    buf: *mut u8,
    len: usize,
) -> AbiIoPoll {
    let socket = fake_state(state);
    let n = len.min(socket.echo.len());
    // SAFETY: `buf` is `len` writable bytes for the call.
    let out = unsafe { std::slice::from_raw_parts_mut(buf, n) };
    for (slot, byte) in out.iter_mut().zip(socket.echo.drain(..n)) {
        *slot = byte;
    }
    AbiIoPoll::ready(n)
}

/// # Safety
/// The socket contract, which the plugin side under test keeps.
unsafe extern "C" fn fake_socket_write(
    state: *mut c_void,
    _cx: *mut FfiContext<'_>,
    buf: *const u8,
    len: usize,
) -> AbiIoPoll {
    let socket = fake_state(state);
    // SAFETY: `buf` is `len` readable bytes for the call.
    let data = unsafe { std::slice::from_raw_parts(buf, len) };
    if data == b"fail" {
        let err = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by the fake");
        return AbiIoPoll::failed(&err);
    }
    socket.echo.extend(data);
    if let Some(name) = &socket.tls {
        socket.echo.extend(format!(" (tls {name})").as_bytes());
    }
    AbiIoPoll::ready(len)
}

/// # Safety
/// The socket contract, which the plugin side under test keeps.
unsafe extern "C" fn fake_socket_ready(_state: *mut c_void, _cx: *mut FfiContext<'_>) -> AbiIoPoll {
    AbiIoPoll::ready(0)
}

/// # Safety
/// The socket contract, which the plugin side under test keeps.
unsafe extern "C" fn fake_socket_start_tls(
    state: *mut c_void,
    server_name: AbiStr,
) -> FfiFuture<AbiConnectOutcome> {
    // SAFETY: `start_tls` takes the socket: freed here, once.
    let old = unsafe { Box::from_raw(state.cast::<FakeSocket>()) };
    // SAFETY: the name is borrowed for the call.
    let name = unsafe { server_name.to_str("server name") }.expect("UTF-8");
    let name = if name.is_empty() {
        "connected-name"
    } else {
        name
    };
    let outcome = AbiConnectOutcome::ok(fake_socket(Some(name.to_owned()), old.closes));
    std::future::ready(outcome).into_ffi()
}

/// # Safety
/// The socket contract, which the plugin side under test keeps.
unsafe extern "C" fn fake_socket_peer_addr(_state: *mut c_void) -> AbiSocketAddr {
    crate::ffi::addr::socket_addr_to_abi(Some("192.0.2.9:5432".parse().expect("v4")))
}

/// # Safety
/// The socket contract, which the plugin side under test keeps.
unsafe extern "C" fn fake_socket_drop(state: *mut c_void) {
    // SAFETY: the plugin closes each socket once.
    let socket = unsafe { Box::from_raw(state.cast::<FakeSocket>()) };
    socket.closes.fetch_add(1, Ordering::SeqCst);
}
