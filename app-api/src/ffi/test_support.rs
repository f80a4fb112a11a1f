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

/// What a fake host WebSocket shares with its test: the client's messages still to deliver,
/// what the plugin sent, and how often the socket was released.
#[derive(Debug, Default)]
pub(super) struct FakeWsState {
    incoming: std::collections::VecDeque<(u32, u32, Bytes)>,
    client_ended: bool,
    sent: Vec<(u32, u32, Bytes)>,
    /// The send queue's length: sends beyond it stay pending (the fake never drains it).
    capacity: usize,
    /// The plugin sent a close: nothing more can be sent.
    closing: bool,
    releases: usize,
}

/// The test's handle on a fake WebSocket.
#[derive(Clone, Debug, Default)]
pub(super) struct FakeWs(Arc<std::sync::Mutex<FakeWsState>>);

impl FakeWs {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeWsState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The client goes away: after what it sent, the plugin receives the end.
    pub(super) fn end_client(&self) {
        self.lock().client_ended = true;
    }

    /// What the plugin sent, as `(kind, code, data)`.
    pub(super) fn sent(&self) -> Vec<(u32, u32, Bytes)> {
        self.lock().sent.clone()
    }

    /// How often the plugin released the socket (once is right).
    pub(super) fn releases(&self) -> usize {
        self.lock().releases
    }
}

/// An open fake WebSocket whose client has sent `incoming` (`(kind, code, text)`), whose send
/// queue holds `capacity` messages, and the test's handle on it.
pub(super) fn fake_websocket<'a>(
    capacity: usize,
    incoming: impl IntoIterator<Item = (u32, u32, &'a str)>,
) -> (AbiWebSocket, FakeWs) {
    let fake = FakeWs::default();
    {
        let mut state = fake.lock();
        state.capacity = capacity;
        state.incoming = incoming
            .into_iter()
            .map(|(kind, code, text)| (kind, code, Bytes::copy_from_slice(text.as_bytes())))
            .collect();
    }
    let socket = AbiWebSocket {
        state: Box::into_raw(Box::new(fake.clone())).cast(),
        vtable: &FAKE_WS_VTABLE,
    };
    (socket, fake)
}

static FAKE_WS_VTABLE: AbiWsVTable = AbiWsVTable {
    size: std::mem::size_of::<AbiWsVTable>(),
    poll_recv: fake_ws_recv,
    poll_send: fake_ws_send,
    drop: fake_ws_drop,
};

fn fake_ws<'a>(state: *mut c_void) -> &'a FakeWs {
    // SAFETY: `state` is a live `FakeWs` box made by `fake_websocket` (the socket contract the
    // plugin side keeps).
    unsafe { &*state.cast::<FakeWs>() }
}

/// # Safety
/// The socket contract, which the plugin side under test keeps.
unsafe extern "C" fn fake_ws_recv(state: *mut c_void, _cx: *mut FfiContext<'_>) -> AbiWsRecv {
    let mut fake = fake_ws(state).lock();
    match fake.incoming.pop_front() {
        Some((kind, code, data)) => AbiWsRecv::message(AbiWsMessage::new(kind, code, data)),
        None if fake.client_ended => AbiWsRecv::end(),
        None => AbiWsRecv::pending(),
    }
}

/// # Safety
/// The socket contract, which the plugin side under test keeps.
unsafe extern "C" fn fake_ws_send(
    state: *mut c_void,
    _cx: *mut FfiContext<'_>,
    msg: *mut AbiWsMessage,
) -> u32 {
    let mut fake = fake_ws(state).lock();
    // SAFETY: `msg` is the plugin's, valid for the call.
    let msg = unsafe { &mut *msg };
    if fake.closing || fake.client_ended {
        return WS_SEND_CLOSED;
    }
    let view = AbiStr {
        ptr: msg.data.ptr,
        len: msg.data.len,
    };
    let valid = match msg.kind {
        // SAFETY: the data is readable until released.
        WS_TEXT => std::str::from_utf8(unsafe { view.as_bytes() }).is_ok(),
        WS_BINARY | WS_CLOSE => true,
        _ => false,
    };
    if !valid || (msg.kind == WS_CLOSE && msg.data.len > 123) {
        return WS_SEND_INVALID;
    }
    if fake.sent.len() >= fake.capacity {
        return WS_SEND_PENDING;
    }
    let data = std::mem::replace(&mut msg.data, AbiBuf::empty());
    // SAFETY: on `WS_SEND_OK` the data is ours to release.
    let data = unsafe { data.into_bytes() };
    fake.closing = msg.kind == WS_CLOSE;
    fake.sent.push((msg.kind, msg.code, data));
    WS_SEND_OK
}

/// # Safety
/// The socket contract, which the plugin side under test keeps.
unsafe extern "C" fn fake_ws_drop(state: *mut c_void) {
    // SAFETY: the plugin releases each socket once.
    let fake = unsafe { Box::from_raw(state.cast::<FakeWs>()) };
    fake.lock().releases += 1;
}

/// What a fake host subscription shares with its test.
#[derive(Debug, Default)]
pub(super) struct FakeSubState {
    messages: std::collections::VecDeque<Bytes>,
    /// Reported with the first message.
    dropped: u64,
    /// Once the messages are delivered: the end, and why; `None` stays pending.
    end: Option<String>,
    polls: usize,
    releases: usize,
}

/// The test's handle on a fake subscription.
#[derive(Clone, Debug, Default)]
pub(super) struct FakeSub(Arc<std::sync::Mutex<FakeSubState>>);

impl FakeSub {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeSubState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How often the plugin polled it.
    pub(super) fn polls(&self) -> usize {
        self.lock().polls
    }

    /// How often the plugin released it (once is right).
    pub(super) fn releases(&self) -> usize {
        self.lock().releases
    }
}

/// An open fake subscription that delivers `messages` (the first after `dropped` dropped
/// ones), then ends with `end` (empty: stays pending), and the test's handle on it.
pub(super) fn fake_subscription<'a>(
    messages: impl IntoIterator<Item = &'a str>,
    dropped: u64,
    end: &str,
) -> (AbiSubscription, FakeSub) {
    let fake = FakeSub::default();
    {
        let mut state = fake.lock();
        state.messages = messages
            .into_iter()
            .map(|text| Bytes::copy_from_slice(text.as_bytes()))
            .collect();
        state.dropped = dropped;
        state.end = (!end.is_empty()).then(|| end.to_owned());
    }
    let subscription = AbiSubscription {
        state: Box::into_raw(Box::new(fake.clone())).cast(),
        vtable: &FAKE_SUB_VTABLE,
    };
    (subscription, fake)
}

static FAKE_SUB_VTABLE: AbiSubscriptionVTable = AbiSubscriptionVTable {
    size: std::mem::size_of::<AbiSubscriptionVTable>(),
    poll_next: fake_sub_next,
    drop: fake_sub_drop,
};

/// # Safety
/// The subscription contract, which the plugin side under test keeps.
unsafe extern "C" fn fake_sub_next(
    state: *mut c_void,
    _cx: *mut FfiContext<'_>,
) -> AbiSubscriptionPoll {
    // SAFETY: `state` is a live `FakeSub` box made by `fake_subscription`.
    let fake = unsafe { &*state.cast::<FakeSub>() };
    let mut fake = fake.lock();
    fake.polls += 1;
    let dropped = std::mem::take(&mut fake.dropped);
    match (fake.messages.pop_front(), &fake.end) {
        (Some(message), _) => AbiSubscriptionPoll::message(message, dropped),
        (None, Some(reason)) => AbiSubscriptionPoll::end(reason.clone(), dropped),
        (None, None) => AbiSubscriptionPoll::pending(),
    }
}

/// # Safety
/// The subscription contract, which the plugin side under test keeps.
unsafe extern "C" fn fake_sub_drop(state: *mut c_void) {
    // SAFETY: the plugin releases each subscription once.
    let fake = unsafe { Box::from_raw(state.cast::<FakeSub>()) };
    fake.lock().releases += 1;
}
