//! The raw C ABI shared by the Berth host and every app plugin.
//!
//! App authors never touch this module: the safe SDK in the rest of the crate and the
//! [`export_app!`](crate::export_app) macro speak it for them. It is public so that the host (and
//! any other host) builds against exactly the same definitions.
//!
//! # What crosses the boundary
//!
//! Only `#[repr(C)]` structs, integers, raw pointer + length pairs and `extern "C"` function
//! pointers. Tags are plain integers (never Rust enums) so that a bad value from the other side is a
//! reportable error rather than undefined behaviour. Futures cross as [`FfiFuture`]: a
//! `#[repr(C)]` `{ptr, poll_fn, drop_fn}` whose waker is passed as a C vtable, in the layout of
//! [async-ffi](https://docs.rs/async-ffi)'s ABI version 2 ([`FUTURE_ABI_VERSION`]). Plugins built
//! with async-ffi's own types interoperate; Berth has its own so that a waker that crosses back
//! to the side that made it arrives as itself (see `ffi`'s *Futures and wakers*).
//!
//! # Ownership
//!
//! Every pointer is either *borrowed* or *owned*, and each type below says which:
//!
//! * **Borrowed** data ([`AbiStr`], [`AbiHeaders`], [`AbiRequest`], [`AbiFetchRequest`]) is valid
//!   only for the duration of the call it is passed to. The callee copies what it keeps.
//!   One exception, since ABI 1.3: the *lent* request (see [`AbiRequest`]).
//! * **Owned** data ([`AbiBuf`], [`AbiBody`], [`AbiResponse`], [`AbiHost`], since ABI 1.4
//!   [`AbiSocket`], since ABI 1.5 [`AbiWsSession`], [`AbiWebSocket`] and [`AbiSubscription`])
//!   is handed over; the receiver must eventually call the release/drop function
//!   carried *next to* the pointer, which runs in the code of the side that allocated it.
//!   Neither side ever frees the other side's memory with its own allocator.
//! * **Counted** data (ABI 1.4: [`AbiAppState`]) belongs to the plugin, which counts its
//!   references with the `retain`/`release` functions it carries; whoever holds a reference
//!   releases it once.
//!
//! # Versioning
//!
//! A plugin exports one symbol, [`DESCRIPTOR_SYMBOL`], returning a pointer to its
//! [`AppDescriptor`]. The host reads the fixed [`DescriptorHeader`] prefix first and refuses the
//! plugin unless:
//!
//! * `magic == MAGIC`,
//! * `abi_major == ABI_MAJOR`,
//! * `abi_minor <= ABI_MINOR` (a plugin built against a newer minor may use something this host
//!   lacks),
//! * `layout_fingerprint == LAYOUT_FINGERPRINTS[abi_minor]` (the layout the plugin was compiled
//!   with is the layout this host expects for that minor).
//!
//! The rule for changes:
//!
//! * **Minor** bump: something is *appended* — a new function at the end of [`HostVTable`] (which
//!   carries its own `size`, so a plugin can see whether a capability exists), a new field at the
//!   end of [`AppDescriptor`] (which carries its `size`, read according to the plugin's minor), a
//!   new tag value that old peers never produce — or the host promises more than before, which
//!   older plugins need not rely on (1.3: the request is lent, see [`AbiRequest`]). Push the new
//!   fingerprint onto [`LAYOUT_FINGERPRINTS`] (the same value when no layout changed); never
//!   edit older entries.
//! * **Major** bump: anything else — a field reordered, resized, removed or retyped, a tag's
//!   meaning changed, a new version of the future ABI. Old plugins are then refused.
//!
//! [`LAYOUT_FINGERPRINTS`] holds literals and a compile-time assertion compares its last entry
//! with the freshly computed [`LAYOUT_FINGERPRINT`], so a layout change cannot be committed
//! without a deliberate version decision.

use std::ffi::c_void;
use std::mem::{align_of, offset_of, size_of};

use std::marker::PhantomData;

/// The version of async-ffi's ABI that [`FfiFuture`], [`FfiPoll`] and [`FfiContext`] reproduce
/// (async-ffi 0.5's `ABI_VERSION`).
pub const FUTURE_ABI_VERSION: u32 = 2;

/// A future across the boundary, owned by whoever holds it: polled with `poll_fn`, freed with
/// `drop_fn` exactly once. Made with `FfiFuture::new`, polled as a Rust future (`ffi` has both).
#[repr(C)]
pub struct FfiFuture<T> {
    pub(crate) fut_ptr: *mut c_void,
    pub(crate) poll_fn:
        unsafe extern "C" fn(fut_ptr: *mut c_void, cx: *mut FfiContext<'_>) -> FfiPoll<T>,
    pub(crate) drop_fn: unsafe extern "C" fn(fut_ptr: *mut c_void),
}

/// `std::task::Poll` across the boundary, and `Panicked` for a poll that panicked (the future is
/// then only dropped). A `u8`-tagged C union, as async-ffi lays it out.
#[repr(C, u8)]
#[derive(Debug)]
pub enum FfiPoll<T> {
    /// The output.
    Ready(T),
    /// Not yet: the context's waker will be woken.
    Pending,
    /// The poll panicked.
    Panicked,
}

/// The `Context` of one poll across the boundary: a borrowed waker, valid for that call only.
#[repr(C)]
pub struct FfiContext<'a> {
    pub(crate) waker: *const FfiWakerBase,
    pub(crate) _marker: PhantomData<&'a FfiWakerBase>,
}

/// What the other side sees of a waker: its vtable first, the maker's own data after it.
#[repr(C)]
#[derive(Debug)]
pub struct FfiWakerBase {
    /// The maker's functions for this waker.
    pub vtable: *const FfiWakerVTable,
}

/// A waker's functions. `clone` returns a new owned waker; `wake` and `drop` consume an owned
/// one; `wake_by_ref` works on any.
#[repr(C)]
#[derive(Debug)]
pub struct FfiWakerVTable {
    /// Clones the waker.
    pub clone: unsafe extern "C" fn(*const FfiWakerBase) -> *const FfiWakerBase,
    /// Wakes and releases an owned waker.
    pub wake: unsafe extern "C" fn(*const FfiWakerBase),
    /// Wakes, keeping the waker.
    pub wake_by_ref: unsafe extern "C" fn(*const FfiWakerBase),
    /// Releases an owned waker.
    pub drop: unsafe extern "C" fn(*const FfiWakerBase),
}

/// `b"BERTHAPP"` as a big-endian integer: the first 8 bytes of every descriptor.
pub const MAGIC: u64 = u64::from_be_bytes(*b"BERTHAPP");

/// Incompatible ABI generation. See the module docs for what bumps it.
pub const ABI_MAJOR: u32 = 1;

/// Compatible additions within [`ABI_MAJOR`]. See the module docs for what bumps it.
pub const ABI_MINOR: u32 = 5;

/// NUL-terminated name of the one symbol every plugin exports:
/// `extern "C" fn() -> *const AppDescriptor`.
pub const DESCRIPTOR_SYMBOL: &[u8] = b"berth_app_descriptor\0";

/// Signature of [`DESCRIPTOR_SYMBOL`].
pub type DescriptorFn = unsafe extern "C" fn() -> *const AppDescriptor;

/// Borrowed bytes: valid only during the call they are passed to. `ptr` may be null when
/// `len == 0`. Text fields (method, URI, names) are UTF-8 unless stated otherwise; header values
/// are arbitrary bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AbiStr {
    /// First byte, or null for the empty string.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

/// Owned bytes. The receiver reads `ptr[..len]` for as long as it likes, then calls
/// `release(owner)` exactly once; `release` runs in the allocating side's code and frees
/// everything. `release == None` means nothing needs freeing (static or empty data).
#[repr(C)]
#[derive(Debug)]
pub struct AbiBuf {
    /// First byte, or null for empty.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
    /// Opaque allocation handle, meaningful only to `release`.
    pub owner: *mut c_void,
    /// Frees `owner` (and with it the bytes). Owned by the allocating side.
    pub release: Option<unsafe extern "C" fn(owner: *mut c_void)>,
}

/// One header field, borrowed from whoever built the enclosing [`AbiHeaders`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AbiHeader {
    /// Header name bytes (lower-case ASCII token).
    pub name: AbiStr,
    /// Header value bytes, byte-exact (may be non-UTF-8).
    pub value: AbiStr,
}

/// A borrowed array of headers, in order; repeated names appear once per value.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AbiHeaders {
    /// First header, or null when `len == 0`.
    pub ptr: *const AbiHeader,
    /// Number of headers.
    pub len: usize,
}

/// A socket address. `family` is [`ADDR_NONE`], [`ADDR_V4`] (first 4 bytes of `ip`) or
/// [`ADDR_V6`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AbiSocketAddr {
    /// One of the `ADDR_*` constants.
    pub family: u8,
    /// Port in host byte order.
    pub port: u16,
    /// Address bytes in network order.
    pub ip: [u8; 16],
    /// IPv6 scope id (0 for IPv4).
    pub scope_id: u32,
}

/// [`AbiSocketAddr::family`]: no address (e.g. a Unix socket or a test).
pub const ADDR_NONE: u8 = 0;
/// [`AbiSocketAddr::family`]: IPv4.
pub const ADDR_V4: u8 = 4;
/// [`AbiSocketAddr::family`]: IPv6.
pub const ADDR_V6: u8 = 6;

/// [`AbiRequest::version`] values.
pub const HTTP_09: u32 = 9;
/// HTTP/1.0.
pub const HTTP_10: u32 = 10;
/// HTTP/1.1.
pub const HTTP_11: u32 = 11;
/// HTTP/2.
pub const HTTP_2: u32 = 20;
/// HTTP/3.
pub const HTTP_3: u32 = 30;

/// A body: a stream of owned chunks pulled by the receiver.
///
/// Ownership of the whole struct moves to the receiver, which polls `poll_chunk` only when it can
/// use another chunk (that is the backpressure) and calls `drop(state)` exactly once when done —
/// at the end of the stream or earlier. Both functions run in the producer's code. A body with
/// `poll_chunk == None` is empty; its `drop` may still be set.
#[repr(C)]
#[derive(Debug)]
pub struct AbiBody {
    /// Producer's stream state, opaque to the receiver.
    pub state: *mut c_void,
    /// Polls for the next chunk, registering the context's waker when pending.
    pub poll_chunk:
        Option<unsafe extern "C" fn(state: *mut c_void, cx: *mut FfiContext<'_>) -> AbiChunkPoll>,
    /// Frees `state`. Called exactly once by the receiver.
    pub drop: Option<unsafe extern "C" fn(state: *mut c_void)>,
    /// Exact total length in bytes when known, else [`LEN_UNKNOWN`].
    pub len_hint: u64,
}

/// [`AbiBody::len_hint`] when the length is not known in advance.
pub const LEN_UNKNOWN: u64 = u64::MAX;

/// Result of [`AbiBody::poll_chunk`]. `data` is an owned chunk for [`CHUNK_DATA`], an owned
/// UTF-8 message for [`CHUNK_ERROR`], and empty otherwise.
#[repr(C)]
#[derive(Debug)]
pub struct AbiChunkPoll {
    /// One of the `CHUNK_*` constants.
    pub tag: u32,
    /// Chunk bytes or error message; always released by the receiver.
    pub data: AbiBuf,
}

/// Not ready; the waker was registered.
pub const CHUNK_PENDING: u32 = 0;
/// A chunk of data.
pub const CHUNK_DATA: u32 = 1;
/// The stream ended normally; do not poll again.
pub const CHUNK_END: u32 = 2;
/// The stream failed (or the producer panicked); do not poll again.
pub const CHUNK_ERROR: u32 = 3;

/// An inbound request as the app sees it; the body is passed separately because it is owned.
///
/// **Lent, since ABI 1.3.** The struct itself is borrowed for the duration of
/// [`AppDescriptor::handle`], but everything it points to (strings, the header array and its
/// names and values) stays valid and unchanged for as long as the `host` reference passed with
/// it, or any clone of it, is held. Its strings are UTF-8, its header names are lower-case
/// HTTP tokens and its values free of control characters but tab, as hyper parsed them. A
/// plugin can therefore read the request in place for as long as it holds a host reference,
/// instead of copying it during the call. (Plugins built for an older minor copy it, which a
/// 1.3 host allows just the same; a 1.3 plugin is never loaded by an older host.)
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AbiRequest {
    /// Method, e.g. `GET`.
    pub method: AbiStr,
    /// Request target as received (origin form, or absolute form for HTTP/2).
    pub uri: AbiStr,
    /// One of the `HTTP_*` constants.
    pub version: u32,
    /// Request headers.
    pub headers: AbiHeaders,
    /// The client's address.
    pub peer_addr: AbiSocketAddr,
    /// The local address the connection arrived on.
    pub local_addr: AbiSocketAddr,
    /// The app's mount prefix, e.g. `/hello` (WSGI's `SCRIPT_NAME`).
    pub mount_prefix: AbiStr,
    /// The path below the prefix, always starting with `/` (WSGI's `PATH_INFO`), still
    /// percent-encoded as received.
    pub path: AbiStr,
    /// The query string without `?`, empty when absent.
    pub query: AbiStr,
}

/// A response head plus body, produced by one side and consumed by the other: by the app for its
/// answer, by the host for an outbound fetch.
///
/// The receiver reads `status` and `headers` (copying them, or in place for as long as it
/// needs them), then calls `release(owner)` exactly once, which frees the header storage in the
/// producer. `body` moves to the receiver (see [`AbiBody`]).
#[repr(C)]
#[derive(Debug)]
pub struct AbiResponse {
    /// HTTP status code.
    pub status: u16,
    /// Headers, borrowed from `owner`.
    pub headers: AbiHeaders,
    /// Body, owned by the receiver from now on.
    pub body: AbiBody,
    /// Producer's storage for `headers`.
    pub owner: *mut c_void,
    /// Frees `owner`; producer's code.
    pub release: Option<unsafe extern "C" fn(owner: *mut c_void)>,
}

/// What an app's handler future resolves to.
#[repr(C)]
#[derive(Debug)]
pub struct AbiHandleOutcome {
    /// [`OUTCOME_OK`] (then `response` is set), or [`OUTCOME_PANICKED`] / [`OUTCOME_ERROR`]
    /// (then `message` says what happened and `response` is empty).
    pub tag: u32,
    /// The response (owned by the receiver, see [`AbiResponse`]).
    pub response: AbiResponse,
    /// An owned UTF-8 message, released by the receiver.
    pub message: AbiBuf,
}

/// The handler returned a response.
pub const OUTCOME_OK: u32 = 0;
/// The handler panicked; the panic was caught inside the plugin.
pub const OUTCOME_PANICKED: u32 = 1;
/// The plugin could not run the handler (e.g. it could not read the request); `message` says why.
pub const OUTCOME_ERROR: u32 = 2;

/// An outbound HTTP request from the app. Borrowed for the duration of [`HostVTable::fetch`];
/// the body is passed separately because it is owned.
#[repr(C)]
#[derive(Debug)]
pub struct AbiFetchRequest {
    /// Method, e.g. `GET`.
    pub method: AbiStr,
    /// Absolute URL.
    pub url: AbiStr,
    /// Request headers.
    pub headers: AbiHeaders,
    /// Time limit for the whole exchange up to the response head, in milliseconds; 0 means the
    /// host's default.
    pub timeout_ms: u64,
}

/// What an outbound fetch resolves to. `response` is set for [`FETCH_OK`]; for every other tag
/// `message` holds a UTF-8 reason. Both are owned by the receiver (the app).
#[repr(C)]
#[derive(Debug)]
pub struct AbiFetchOutcome {
    /// One of the `FETCH_*` constants.
    pub tag: u32,
    /// The upstream response.
    pub response: AbiResponse,
    /// Error message.
    pub message: AbiBuf,
}

/// The upstream answered (any status).
pub const FETCH_OK: u32 = 0;
/// The request could not be built: bad method, URL, header or scheme.
pub const FETCH_INVALID_REQUEST: u32 = 1;
/// No connection could be made (refused, unreachable, DNS failure).
pub const FETCH_CONNECT: u32 = 2;
/// The time limit passed before the response head arrived.
pub const FETCH_TIMEOUT: u32 = 3;
/// The host's policy forbids this request.
pub const FETCH_DENIED: u32 = 4;
/// Any other failure (connection reset, protocol error, ...).
pub const FETCH_OTHER: u32 = 5;

/// [`HostVTable::log`] levels, matching `tracing`'s.
pub const LOG_ERROR: u32 = 1;
/// Warning.
pub const LOG_WARN: u32 = 2;
/// Information.
pub const LOG_INFO: u32 = 3;
/// Debugging.
pub const LOG_DEBUG: u32 = 4;
/// Tracing.
pub const LOG_TRACE: u32 = 5;

/// The host's capabilities, a static table in host code.
///
/// It only ever grows at its end (a minor version bump); `size` is the size of the table as the
/// host built it, so a plugin built against a newer minor can tell which functions exist before
/// calling them. Every function takes the `ctx` from the [`AbiHost`] the plugin was given, and
/// may be called from any thread, concurrently with the others (an app may share its host
/// handle between futures polled on different runtime threads).
#[repr(C)]
#[derive(Debug)]
pub struct HostVTable {
    /// `size_of::<HostVTable>()` in the host.
    pub size: usize,
    /// Takes another reference to `ctx` (returns it); each reference is released with `drop_ctx`.
    pub clone_ctx: unsafe extern "C" fn(ctx: *mut c_void) -> *mut c_void,
    /// Releases one reference to `ctx`.
    pub drop_ctx: unsafe extern "C" fn(ctx: *mut c_void),
    /// Emits `msg` (borrowed) at `level` (a `LOG_*` constant) in the host's log, tagged with the
    /// app's name.
    pub log: unsafe extern "C" fn(ctx: *mut c_void, level: u32, msg: AbiStr),
    /// A future that completes after `nanos` nanoseconds on the host's timer. The future is owned
    /// by the plugin; dropping it cancels the timer. It resolves to 0.
    pub sleep: unsafe extern "C" fn(ctx: *mut c_void, nanos: u64) -> FfiFuture<u32>,
    /// Starts an outbound request on the host's pooled client. `req` is borrowed for the call;
    /// `body` moves to the host. The host runs the exchange as its own task; dropping the
    /// returned future aborts it, closing the connection if the exchange was in flight.
    pub fetch: unsafe extern "C" fn(
        ctx: *mut c_void,
        req: *const AbiFetchRequest,
        body: AbiBody,
    ) -> FfiFuture<AbiFetchOutcome>,

    // --- ABI 1.2 ---
    /// Milliseconds left until the deadline of the request (or hook) this `ctx` serves, or
    /// [`NO_DEADLINE`]. The host also bounds every outbound call by it.
    pub time_left_ms: unsafe extern "C" fn(ctx: *mut c_void) -> u64,
    /// The largest outbound response body, in bytes, the app may read whole into memory
    /// (`FetchResponse::bytes`); streaming a body is not limited by it. [`NO_LIMIT`]: none.
    pub max_buffered_response: unsafe extern "C" fn(ctx: *mut c_void) -> u64,

    // --- ABI 1.4 ---
    /// Opens a TCP connection for the app on the host's reactor: the host resolves the name,
    /// checks the app's allowlist (deny by default), applies its connect time limit and the
    /// app's limit on open sockets, and does TLS when `req.tls` asks for it. `req` is borrowed
    /// for the call. Dropping the returned future abandons the attempt; the socket it resolves
    /// to is owned by the plugin (see [`AbiSocket`]).
    pub connect: unsafe extern "C" fn(
        ctx: *mut c_void,
        req: *const AbiConnectRequest,
    ) -> FfiFuture<AbiConnectOutcome>,
    /// Runs `task` (moved to the host) as a task of its own on the host's runtime, owned by the
    /// app *version* rather than by the request whose `ctx` spawned it: no request deadline
    /// bounds it, and it is cancelled (dropped) after the version's `shutdown` hook has run.
    /// The returned future (owned by the plugin) resolves to a `TASK_*` constant when the task
    /// ends; dropping it cancels the task. A task that panics ends with [`TASK_PANICKED`] and
    /// the host logs the panic with the app's name.
    pub spawn: unsafe extern "C" fn(ctx: *mut c_void, task: FfiFuture<u32>) -> FfiFuture<u32>,
    /// A new `ctx` reference (released with `drop_ctx`) for the same app version but no request:
    /// no deadline, nothing lent. What a spawned task calls the host with, so that its timers
    /// and fetches are not bound by the deadline of the request that spawned it.
    pub task_ctx: unsafe extern "C" fn(ctx: *mut c_void) -> *mut c_void,
    /// Hands one reference to the app version's state (built by `init`) to the host, which
    /// releases it (`state.release(state.ptr)`) when the version is retired, after its
    /// `shutdown` hook. Returns [`STATE_SET`], or [`STATE_TAKEN`] (the version has had a state
    /// already; the host then releases the new one at once).
    pub set_app_state: unsafe extern "C" fn(ctx: *mut c_void, state: AbiAppState) -> u32,
    /// The `ptr` of the app version's state with one more reference taken for the caller
    /// (through the state's `retain`, while the host still holds its own), which the caller
    /// releases with the state's `release`; null when the version has no state, or no longer
    /// has one (it was retired). Counting references on the plugin's side lets a request or
    /// task keep the state it uses for as long as it likes, while the host's own reference
    /// still goes when the version is retired: a state that holds a `ctx` reference itself (a
    /// pool keeps one to open connections) would otherwise keep itself alive for ever.
    pub app_state: unsafe extern "C" fn(ctx: *mut c_void) -> *const c_void,

    // --- ABI 1.5 ---
    /// Accepts the WebSocket handshake of the request `ctx` serves (call it from the handler,
    /// before its future resolves). `accept` is borrowed for the call; `session` moves to the
    /// host in every case, which calls exactly one of its `start` or `drop`. Returns
    /// [`WS_ACCEPT_OK`], or why not (then `session` has been dropped already).
    ///
    /// After [`WS_ACCEPT_OK`] the host answers the request with `101 Switching Protocols`
    /// (plus `accept`'s subprotocol and headers) as soon as the handler's future resolves with
    /// [`OUTCOME_OK`]; the response it resolves to is then released unread. When the handler
    /// panics or misses its deadline instead, the client gets the host's error answer and the
    /// session is dropped. Once the connection is upgraded, the host calls `session.start` on
    /// its runtime with the socket and a host handle of its own (no deadline, nothing lent),
    /// and polls the session future for as long as it runs: the socket holds its app version
    /// as a request does.
    pub ws_accept: unsafe extern "C" fn(
        ctx: *mut c_void,
        accept: *const AbiWsAccept,
        session: AbiWsSession,
    ) -> u32,
    /// Subscribes to a pub/sub `channel` (UTF-8, borrowed for the call). The future (owned by
    /// the plugin) resolves once the subscription is in place: messages published after that
    /// reach it. The [`AbiSubscription`] it resolves to is owned by the plugin.
    pub subscribe:
        unsafe extern "C" fn(ctx: *mut c_void, channel: AbiStr) -> FfiFuture<AbiSubscribeOutcome>,
    /// Publishes `payload` (moves to the host) on `channel` (UTF-8, borrowed for the call).
    pub publish: unsafe extern "C" fn(
        ctx: *mut c_void,
        channel: AbiStr,
        payload: AbiBuf,
    ) -> FfiFuture<AbiPublishOutcome>,
}

/// How an app accepts a WebSocket handshake (ABI 1.5). Borrowed for [`HostVTable::ws_accept`].
#[repr(C)]
#[derive(Debug)]
pub struct AbiWsAccept {
    /// The subprotocol chosen, one of those the client offered (`Sec-WebSocket-Protocol`);
    /// empty for none.
    pub protocol: AbiStr,
    /// Extra headers for the `101` response (cookies, say). The host sets the handshake's own
    /// (`Upgrade`, `Connection`, `Sec-WebSocket-Accept`, `Sec-WebSocket-Protocol`) itself and
    /// refuses them here.
    pub headers: AbiHeaders,
}

/// [`HostVTable::ws_accept`]: the handshake will be answered with `101`.
pub const WS_ACCEPT_OK: u32 = 0;
/// The request is not a WebSocket handshake (method, `Upgrade`, `Connection`,
/// `Sec-WebSocket-Key` or `Sec-WebSocket-Version`), or `ctx` serves no request.
pub const WS_ACCEPT_NOT_UPGRADE: u32 = 1;
/// The request was accepted already.
pub const WS_ACCEPT_TWICE: u32 = 2;
/// `accept` is not valid: a subprotocol the client did not offer, or a header that is not
/// valid or is the host's to set.
pub const WS_ACCEPT_INVALID: u32 = 3;

/// The app's side of an accepted WebSocket (ABI 1.5), owned by the host from
/// [`HostVTable::ws_accept`] on: it calls `start(state, ..)` once the connection is upgraded,
/// or `drop(state)` if it never is. Both are plugin code and consume `state`.
#[repr(C)]
#[derive(Debug)]
pub struct AbiWsSession {
    /// The plugin's session state (the app's closure), opaque to the host.
    pub state: *mut c_void,
    /// Starts the session: `socket` and `host` move to the plugin. The future (owned by the
    /// host) resolves (to 0) when the app is done with the socket; a session that panics
    /// resolves [`FfiPoll::Panicked`], and the host closes the socket with 1011.
    pub start: unsafe extern "C" fn(
        state: *mut c_void,
        socket: AbiWebSocket,
        host: AbiHost,
    ) -> FfiFuture<u32>,
    /// Frees `state` without starting.
    pub drop: unsafe extern "C" fn(state: *mut c_void),
}

/// An open WebSocket (ABI 1.5), owned by the plugin: `state` is host data that only the
/// functions of `vtable` touch, and `vtable.drop(state)` releases it, exactly once. The host
/// runs the protocol (handshake, framing, fragmentation, UTF-8 checks, ping and pong, limits);
/// the plugin sees whole messages. The plugin may call `poll_recv` and `poll_send` at the same
/// time (a reader and a writer task), but never one of them twice at once, and `drop` only when
/// no other call runs. When the plugin drops the socket (or its session ends) before closing
/// it, the host closes it with 1000.
#[repr(C)]
#[derive(Debug)]
pub struct AbiWebSocket {
    /// Host state, opaque to the plugin.
    pub state: *mut c_void,
    /// The socket's functions, a static in host code.
    pub vtable: *const AbiWsVTable,
}

/// The functions of an [`AbiWebSocket`] (ABI 1.5).
#[repr(C)]
#[derive(Debug)]
pub struct AbiWsVTable {
    /// `size_of::<AbiWsVTable>()` in the host.
    pub size: usize,
    /// The next message from the client: [`WS_RECV_PENDING`] (the waker will be woken),
    /// [`WS_RECV_MESSAGE`] (the message is owned by the plugin), or [`WS_RECV_END`]. The close
    /// that ends a socket arrives once as a [`WS_CLOSE`] message; every poll after it is
    /// [`WS_RECV_END`].
    pub poll_recv: unsafe extern "C" fn(state: *mut c_void, cx: *mut FfiContext<'_>) -> AbiWsRecv,
    /// Queues `msg` for the client (the send queue is bounded: [`WS_SEND_PENDING`] means full,
    /// and the waker will be woken when there is room). On [`WS_SEND_OK`] the host has taken
    /// `msg.data` (the plugin must not release it); on any other result the plugin keeps it.
    /// A [`WS_CLOSE`] message starts the closing handshake; nothing can be sent after it.
    pub poll_send: unsafe extern "C" fn(
        state: *mut c_void,
        cx: *mut FfiContext<'_>,
        msg: *mut AbiWsMessage,
    ) -> u32,
    /// Releases the socket (closing it with 1000 unless it is closed already) and frees
    /// `state`.
    pub drop: unsafe extern "C" fn(state: *mut c_void),
}

/// One WebSocket message (ABI 1.5).
#[repr(C)]
#[derive(Debug)]
pub struct AbiWsMessage {
    /// [`WS_TEXT`], [`WS_BINARY`] or [`WS_CLOSE`].
    pub kind: u32,
    /// For [`WS_CLOSE`]: the close code (1005 when the peer sent none); 0 otherwise.
    pub code: u32,
    /// The payload (UTF-8 for [`WS_TEXT`]), or the close reason (UTF-8). Owned: by whoever
    /// holds the message, released once.
    pub data: AbiBuf,
}

/// [`AbiWsMessage::kind`]: a text message.
pub const WS_TEXT: u32 = 1;
/// [`AbiWsMessage::kind`]: a binary message.
pub const WS_BINARY: u32 = 2;
/// [`AbiWsMessage::kind`]: a close frame.
pub const WS_CLOSE: u32 = 3;

/// What [`AbiWsVTable::poll_recv`] returns (ABI 1.5).
#[repr(C)]
#[derive(Debug)]
pub struct AbiWsRecv {
    /// One of the `WS_RECV_*` constants.
    pub tag: u32,
    /// For [`WS_RECV_MESSAGE`]: the message, owned by the plugin; empty otherwise.
    pub message: AbiWsMessage,
}

/// Nothing yet; the waker was registered.
pub const WS_RECV_PENDING: u32 = 0;
/// A message.
pub const WS_RECV_MESSAGE: u32 = 1;
/// The socket is closed and everything received was delivered.
pub const WS_RECV_END: u32 = 2;

/// [`AbiWsVTable::poll_send`]: the send queue is full; the waker was registered.
pub const WS_SEND_PENDING: u32 = 0;
/// The message was queued (the host took its data).
pub const WS_SEND_OK: u32 = 1;
/// The socket is closing or closed: nothing more can be sent.
pub const WS_SEND_CLOSED: u32 = 2;
/// The message is not valid (text that is not UTF-8, a close code that may not be sent, a
/// reason over 123 bytes, an unknown kind).
pub const WS_SEND_INVALID: u32 = 3;

/// What [`HostVTable::subscribe`] resolves to (ABI 1.5): `subscription` for [`SUB_OK`]; for
/// every other tag `message` holds a UTF-8 reason and `subscription` is null. Both owned by the
/// plugin.
#[repr(C)]
#[derive(Debug)]
pub struct AbiSubscribeOutcome {
    /// One of [`SUB_OK`], [`SUB_INVALID`], [`SUB_FAILED`].
    pub tag: u32,
    /// The subscription.
    pub subscription: AbiSubscription,
    /// Error message.
    pub message: AbiBuf,
}

/// [`AbiSubscribeOutcome::tag`], [`AbiPublishOutcome::tag`]: done.
pub const SUB_OK: u32 = 0;
/// The channel name is empty, too long or not UTF-8.
pub const SUB_INVALID: u32 = 1;
/// The pub/sub backend failed (Redis unreachable, say).
pub const SUB_FAILED: u32 = 2;

/// A subscription to one channel (ABI 1.5), owned by the plugin: `vtable.drop(state)`
/// unsubscribes and frees it, exactly once. The host queues the channel's messages for it in a
/// bounded queue of its own, so a subscriber that does not keep up never slows the others: by
/// the host's policy its oldest messages are dropped (counted in
/// [`AbiSubscriptionPoll::dropped`]), or the subscription ends (and the WebSocket whose session
/// made it is closed with 1008).
#[repr(C)]
#[derive(Debug)]
pub struct AbiSubscription {
    /// Host state, opaque to the plugin; null when there is none.
    pub state: *mut c_void,
    /// The subscription's functions, a static in host code; null when there is none.
    pub vtable: *const AbiSubscriptionVTable,
}

/// The functions of an [`AbiSubscription`] (ABI 1.5).
#[repr(C)]
#[derive(Debug)]
pub struct AbiSubscriptionVTable {
    /// `size_of::<AbiSubscriptionVTable>()` in the host.
    pub size: usize,
    /// The next message.
    pub poll_next:
        unsafe extern "C" fn(state: *mut c_void, cx: *mut FfiContext<'_>) -> AbiSubscriptionPoll,
    /// Unsubscribes and frees `state`.
    pub drop: unsafe extern "C" fn(state: *mut c_void),
}

/// What [`AbiSubscriptionVTable::poll_next`] returns (ABI 1.5).
#[repr(C)]
#[derive(Debug)]
pub struct AbiSubscriptionPoll {
    /// [`SUB_PENDING`], [`SUB_MESSAGE`] or [`SUB_END`].
    pub tag: u32,
    /// Messages dropped from this subscription's queue (it did not keep up) since the last
    /// message delivered.
    pub dropped: u64,
    /// For [`SUB_MESSAGE`]: the payload; for [`SUB_END`]: why (UTF-8). Owned by the plugin.
    pub data: AbiBuf,
}

/// [`AbiSubscriptionPoll::tag`]: nothing yet; the waker was registered.
pub const SUB_PENDING: u32 = 0;
/// A message.
pub const SUB_MESSAGE: u32 = 1;
/// The subscription ended: it fell behind under the close policy, its app version was retired,
/// or the server is stopping. Do not poll again.
pub const SUB_END: u32 = 2;

/// What [`HostVTable::publish`] resolves to (ABI 1.5). `message` is an owned UTF-8 reason for
/// a tag other than [`SUB_OK`].
#[repr(C)]
#[derive(Debug)]
pub struct AbiPublishOutcome {
    /// One of [`SUB_OK`], [`SUB_INVALID`], [`SUB_FAILED`].
    pub tag: u32,
    /// How many subscribers the backend reached: subscriptions in this process for the
    /// in-process broker, subscribed connections (one per Berth instance) for Redis.
    pub receivers: u64,
    /// Error message.
    pub message: AbiBuf,
}

/// What [`HostVTable::connect`] opens (ABI 1.4). Borrowed for the call.
#[repr(C)]
#[derive(Debug)]
pub struct AbiConnectRequest {
    /// The host name or IP address literal (IPv6 without brackets) to connect to. The host
    /// resolves names itself; the allowlist is matched on this name and `port`.
    pub host: AbiStr,
    /// The TCP port.
    pub port: u16,
    /// [`CONNECT_PLAIN`] or [`CONNECT_TLS`] (TLS from the first byte).
    pub tls: u32,
    /// The name TLS verifies the server's certificate against (SNI); empty means `host`.
    pub server_name: AbiStr,
    /// Time limit for the connection (and its TLS handshake), in milliseconds; 0 means the
    /// host's default. The host also bounds it by the deadline of the request `ctx` serves.
    pub timeout_ms: u64,
}

/// [`AbiConnectRequest::tls`]: a plain TCP connection.
pub const CONNECT_PLAIN: u32 = 0;
/// [`AbiConnectRequest::tls`]: TLS from the first byte, verified with the host's roots.
pub const CONNECT_TLS: u32 = 1;

/// What a connect (or [`AbiSocketVTable::start_tls`]) resolves to (ABI 1.4): `socket` for
/// [`CONNECT_OK`]; for every other tag `message` holds a UTF-8 reason and `socket` is null.
/// Both are owned by the receiver (the plugin).
#[repr(C)]
#[derive(Debug)]
pub struct AbiConnectOutcome {
    /// One of the `CONNECT_*` outcome constants.
    pub tag: u32,
    /// The connected socket.
    pub socket: AbiSocket,
    /// Error message.
    pub message: AbiBuf,
}

/// The connection is open.
pub const CONNECT_OK: u32 = 0;
/// The request could not be used: an empty or invalid host name, port 0, a bad server name.
pub const CONNECT_INVALID: u32 = 1;
/// No connection could be made (refused, unreachable, the name did not resolve).
pub const CONNECT_FAILED: u32 = 2;
/// The time limit passed before the connection (or its TLS handshake) was made.
pub const CONNECT_TIMEOUT: u32 = 3;
/// The app's allowlist does not grant this host and port; nothing was opened.
pub const CONNECT_DENIED: u32 = 4;
/// Any other failure.
pub const CONNECT_OTHER: u32 = 5;
/// The app holds as many open sockets as it may; nothing was opened.
pub const CONNECT_LIMIT: u32 = 6;
/// The TLS handshake failed (the certificate did not verify, the server does not speak TLS).
pub const CONNECT_TLS_FAILED: u32 = 7;

/// An open socket (ABI 1.4), owned by the plugin: `state` is host data that only the
/// functions of `vtable` touch, and `vtable.drop(state)` closes and frees it, exactly once.
/// The plugin never calls two of its functions at once on one socket (the SDK's stream takes
/// `&mut self` for each). The host may close the connection under it, when the app version is
/// retired; every call after that fails with [`IO_ERR_CLOSED`].
#[repr(C)]
#[derive(Debug)]
pub struct AbiSocket {
    /// Host state, opaque to the plugin; null when there is no socket.
    pub state: *mut c_void,
    /// The socket's functions, a static in host code; null when there is no socket.
    pub vtable: *const AbiSocketVTable,
}

/// The functions of an [`AbiSocket`] (ABI 1.4), each given the socket's `state`. The `poll_*`
/// functions follow `AsyncRead`/`AsyncWrite`: [`IO_PENDING`] means the context's waker will be
/// woken when the call can make progress.
#[repr(C)]
#[derive(Debug)]
pub struct AbiSocketVTable {
    /// `size_of::<AbiSocketVTable>()` in the host.
    pub size: usize,
    /// Reads up to `len` bytes into `buf` (the plugin's memory, written only during the call).
    /// Ready with `len == 0` is the end of the stream.
    pub poll_read: unsafe extern "C" fn(
        state: *mut c_void,
        cx: *mut FfiContext<'_>,
        buf: *mut u8,
        len: usize,
    ) -> AbiIoPoll,
    /// Writes up to `len` bytes from `buf` (borrowed for the call); ready with the count taken.
    pub poll_write: unsafe extern "C" fn(
        state: *mut c_void,
        cx: *mut FfiContext<'_>,
        buf: *const u8,
        len: usize,
    ) -> AbiIoPoll,
    /// Flushes what was written (through TLS, when the socket has it).
    pub poll_flush: unsafe extern "C" fn(state: *mut c_void, cx: *mut FfiContext<'_>) -> AbiIoPoll,
    /// Shuts down the write half (TLS's close-notify first, when the socket has it).
    pub poll_shutdown:
        unsafe extern "C" fn(state: *mut c_void, cx: *mut FfiContext<'_>) -> AbiIoPoll,
    /// Upgrades a plain socket to TLS in mid-stream (as PostgreSQL's `SSLRequest` needs),
    /// verifying the server against `server_name` (borrowed for the call; empty means the host
    /// name the socket was opened with). Takes `state`: the plugin must not use or drop it
    /// again. The future resolves to the TLS socket, or to [`CONNECT_TLS_FAILED`] with a
    /// reason (the connection is then closed).
    pub start_tls: unsafe extern "C" fn(
        state: *mut c_void,
        server_name: AbiStr,
    ) -> FfiFuture<AbiConnectOutcome>,
    /// The address the socket is connected to.
    pub peer_addr: unsafe extern "C" fn(state: *mut c_void) -> AbiSocketAddr,
    /// Closes the connection and frees `state`.
    pub drop: unsafe extern "C" fn(state: *mut c_void),
}

/// What a socket's `poll_*` function returns (ABI 1.4).
#[repr(C)]
#[derive(Debug)]
pub struct AbiIoPoll {
    /// [`IO_PENDING`], [`IO_READY`] or [`IO_ERROR`].
    pub tag: u32,
    /// For [`IO_READY`] from `poll_read` and `poll_write`: the number of bytes moved.
    pub len: usize,
    /// For [`IO_ERROR`]: one of the `IO_ERR_*` kinds.
    pub error: u32,
    /// For [`IO_ERROR`]: an owned UTF-8 reason, released by the receiver; empty otherwise.
    pub message: AbiBuf,
}

/// Not ready; the waker was registered.
pub const IO_PENDING: u32 = 0;
/// Done; see [`AbiIoPoll::len`].
pub const IO_READY: u32 = 1;
/// Failed; see [`AbiIoPoll::error`]. A socket that failed may be polled again, and fails again.
pub const IO_ERROR: u32 = 2;

/// [`AbiIoPoll::error`]: anything not listed below.
pub const IO_ERR_OTHER: u32 = 0;
/// The peer reset the connection.
pub const IO_ERR_RESET: u32 = 1;
/// The connection was aborted.
pub const IO_ERR_ABORTED: u32 = 2;
/// Writing to a connection whose peer has gone.
pub const IO_ERR_BROKEN_PIPE: u32 = 3;
/// The operation timed out.
pub const IO_ERR_TIMED_OUT: u32 = 4;
/// The stream ended in the middle of something (a TLS record, say).
pub const IO_ERR_UNEXPECTED_EOF: u32 = 5;
/// The peer sent data that cannot be valid (a bad TLS record, say).
pub const IO_ERR_INVALID_DATA: u32 = 6;
/// The host closed the socket: the app version that opened it was retired.
pub const IO_ERR_CLOSED: u32 = 7;

/// [`HostVTable::spawn`]'s join future: the task ran to its end.
pub const TASK_DONE: u32 = 0;
/// The task panicked (the panic was caught in the plugin and logged by the host).
pub const TASK_PANICKED: u32 = 1;
/// The task was cancelled before it ended: its app version was retired.
pub const TASK_CANCELLED: u32 = 2;

/// An app version's state (ABI 1.4), handed to the host by [`HostVTable::set_app_state`]:
/// `ptr` is plugin data whose references the plugin counts; both functions are plugin code.
#[repr(C)]
#[derive(Debug)]
pub struct AbiAppState {
    /// The state, opaque to the host.
    pub ptr: *mut c_void,
    /// Takes one more reference to `ptr`.
    pub retain: unsafe extern "C" fn(ptr: *mut c_void),
    /// Releases one reference to `ptr`; the last one frees it.
    pub release: unsafe extern "C" fn(ptr: *mut c_void),
}

/// [`HostVTable::set_app_state`]: the state is kept.
pub const STATE_SET: u32 = 0;
/// [`HostVTable::set_app_state`]: the version had a state already; the new one was released.
pub const STATE_TAKEN: u32 = 1;

/// [`HostVTable::max_buffered_response`] when there is no limit.
pub const NO_LIMIT: u64 = u64::MAX;

/// [`HostVTable::time_left_ms`] when there is no deadline.
pub const NO_DEADLINE: u64 = u64::MAX;

/// A handle on the host: its table plus one reference to a per-request context. Owned by the
/// receiver, which releases the reference with `vtable.drop_ctx(ctx)` when done.
#[repr(C)]
#[derive(Debug)]
pub struct AbiHost {
    /// The host's static capability table.
    pub vtable: *const HostVTable,
    /// Per-request host state (the app's identity, its client, its deadline).
    pub ctx: *mut c_void,
}

/// The fixed prefix of [`AppDescriptor`], identical in every ABI version, so that a host can
/// check a plugin before trusting the rest of its layout.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DescriptorHeader {
    /// Must be [`MAGIC`].
    pub magic: u64,
    /// Must equal the host's [`ABI_MAJOR`].
    pub abi_major: u32,
    /// Must be at most the host's [`ABI_MINOR`].
    pub abi_minor: u32,
    /// Must equal `LAYOUT_FINGERPRINTS[abi_minor]`.
    pub layout_fingerprint: u64,
    /// `size_of::<AppDescriptor>()` in the plugin.
    pub size: u64,
}

/// Everything the host needs to know about a plugin. Lives in the plugin's static memory for as
/// long as the library is loaded; all strings in it are `'static` there.
#[repr(C)]
#[derive(Debug)]
pub struct AppDescriptor {
    /// Version check prefix.
    pub header: DescriptorHeader,
    /// The app's name (UTF-8): its default mount is `/<name>`.
    pub name: AbiStr,
    /// The app's version (UTF-8, free form, semver recommended).
    pub version: AbiStr,
    /// The version of the `berth-app` crate the plugin was built with (informational).
    pub sdk_version: AbiStr,
    /// Handles one request. `req` is borrowed for the call; `body` and `host` move to the plugin.
    /// The returned future is owned by the host, which polls it on its runtime and may drop it at
    /// any time (client gone, timeout, shutdown); dropping it drops the app's future.
    pub handle: unsafe extern "C" fn(
        req: *const AbiRequest,
        body: AbiBody,
        host: AbiHost,
    ) -> FfiFuture<AbiHandleOutcome>,

    // --- ABI 1.1 ---
    /// Runs once before the app is mounted (ASGI's lifespan startup), with the app's settings
    /// from the host's config (borrowed for the call) and a host handle (moves to the plugin).
    /// The app is mounted only if the outcome is [`OUTCOME_OK`]. `None`: nothing to run.
    pub init: Option<
        unsafe extern "C" fn(settings: AbiSettings, host: AbiHost) -> FfiFuture<AbiHookOutcome>,
    >,
    /// Runs once before a version of the app is retired (swapped, removed, or the server
    /// stopping), after its last request. `None`: nothing to run.
    pub shutdown: Option<unsafe extern "C" fn(host: AbiHost) -> FfiFuture<AbiHookOutcome>>,
}

/// Size of [`AppDescriptor`] in each minor version, index = minor: the host reads no field past
/// the size of the plugin's minor.
pub const DESCRIPTOR_SIZES: [u64; ABI_MINOR as usize + 1] = [
    offset_of!(AppDescriptor, init) as u64,
    size_of::<AppDescriptor>() as u64,
    size_of::<AppDescriptor>() as u64,
    size_of::<AppDescriptor>() as u64,
    size_of::<AppDescriptor>() as u64,
    size_of::<AppDescriptor>() as u64,
];

/// One string setting (ABI 1.1), borrowed like [`AbiStr`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AbiSetting {
    /// Setting name (UTF-8).
    pub key: AbiStr,
    /// Setting value (UTF-8).
    pub value: AbiStr,
}

/// A borrowed array of settings (ABI 1.1), valid only during the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AbiSettings {
    /// First setting, or null when `len == 0`.
    pub ptr: *const AbiSetting,
    /// Number of settings.
    pub len: usize,
}

/// What a lifecycle hook resolves to (ABI 1.1): [`OUTCOME_OK`], or [`OUTCOME_ERROR`] (the app
/// reported a failure) or [`OUTCOME_PANICKED`] with an owned UTF-8 `message`.
#[repr(C)]
#[derive(Debug)]
pub struct AbiHookOutcome {
    /// One of the `OUTCOME_*` constants.
    pub tag: u32,
    /// Owned by the receiver; empty for [`OUTCOME_OK`].
    pub message: AbiBuf,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

const fn mix(hash: u64, value: u64) -> u64 {
    let bytes = value.to_le_bytes();
    let mut hash = hash;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

/// Folds a type's size, alignment and the offsets of the listed fields into the hash.
macro_rules! layout {
    ($hash:expr, $ty:ty $(, $field:ident)*) => {{
        let mut h = mix($hash, size_of::<$ty>() as u64);
        h = mix(h, align_of::<$ty>() as u64);
        $( h = mix(h, offset_of!($ty, $field) as u64); )*
        h
    }};
}

/// A compile-time hash of the size, alignment and field offsets of every boundary type, plus the
/// target's pointer width and byte order and the future ABI's version. Two builds agree on it
/// exactly when they agree on the layout of everything that crosses the boundary.
pub const LAYOUT_FINGERPRINT: u64 = {
    let mut h = FNV_OFFSET;
    h = mix(h, ABI_MAJOR as u64);
    h = mix(h, FUTURE_ABI_VERSION as u64);
    h = mix(h, usize::BITS as u64);
    h = mix(h, cfg!(target_endian = "little") as u64);
    h = layout!(h, AbiStr, ptr, len);
    h = layout!(h, AbiBuf, ptr, len, owner, release);
    h = layout!(h, AbiHeader, name, value);
    h = layout!(h, AbiHeaders, ptr, len);
    h = layout!(h, AbiSocketAddr, family, port, ip, scope_id);
    h = layout!(h, AbiBody, state, poll_chunk, drop, len_hint);
    h = layout!(h, AbiChunkPoll, tag, data);
    h = layout!(
        h, AbiRequest, method, uri, version, headers, peer_addr, local_addr
    );
    h = layout!(h, AbiRequest, mount_prefix, path, query);
    h = layout!(h, AbiResponse, status, headers, body, owner, release);
    h = layout!(h, AbiHandleOutcome, tag, response, message);
    h = layout!(h, AbiFetchRequest, method, url, headers, timeout_ms);
    h = layout!(h, AbiFetchOutcome, tag, response, message);
    h = layout!(h, HostVTable, size, clone_ctx, drop_ctx, log, sleep, fetch);
    h = layout!(h, AbiHost, vtable, ctx);
    h = layout!(
        h,
        DescriptorHeader,
        magic,
        abi_major,
        abi_minor,
        layout_fingerprint,
        size
    );
    h = layout!(h, AppDescriptor, header, name, version, sdk_version, handle);
    // ABI 1.1
    h = layout!(h, AppDescriptor, init, shutdown);
    h = layout!(h, AbiSetting, key, value);
    h = layout!(h, AbiSettings, ptr, len);
    h = layout!(h, AbiHookOutcome, tag, message);
    h = layout!(h, FfiPoll<AbiHookOutcome>);
    // ABI 1.2
    h = layout!(h, HostVTable, time_left_ms, max_buffered_response);
    h = layout!(h, FfiPoll<AbiHandleOutcome>);
    h = layout!(h, FfiPoll<AbiFetchOutcome>);
    h = layout!(h, FfiPoll<u32>);
    h = layout!(h, FfiFuture<AbiHandleOutcome>);
    h = layout!(h, FfiContext<'static>);
    // ABI 1.4
    h = layout!(
        h,
        HostVTable,
        connect,
        spawn,
        task_ctx,
        set_app_state,
        app_state
    );
    h = layout!(
        h,
        AbiConnectRequest,
        host,
        port,
        tls,
        server_name,
        timeout_ms
    );
    h = layout!(h, AbiConnectOutcome, tag, socket, message);
    h = layout!(h, AbiSocket, state, vtable);
    h = layout!(
        h,
        AbiSocketVTable,
        size,
        poll_read,
        poll_write,
        poll_flush,
        poll_shutdown,
        start_tls,
        peer_addr,
        drop
    );
    h = layout!(h, AbiIoPoll, tag, len, error, message);
    h = layout!(h, AbiAppState, ptr, retain, release);
    h = layout!(h, FfiPoll<AbiConnectOutcome>);
    // ABI 1.5
    h = layout!(h, HostVTable, ws_accept, subscribe, publish);
    h = layout!(h, AbiWsAccept, protocol, headers);
    h = layout!(h, AbiWsSession, state, start, drop);
    h = layout!(h, AbiWebSocket, state, vtable);
    h = layout!(h, AbiWsVTable, size, poll_recv, poll_send, drop);
    h = layout!(h, AbiWsMessage, kind, code, data);
    h = layout!(h, AbiWsRecv, tag, message);
    h = layout!(h, AbiSubscribeOutcome, tag, subscription, message);
    h = layout!(h, AbiSubscription, state, vtable);
    h = layout!(h, AbiSubscriptionVTable, size, poll_next, drop);
    h = layout!(h, AbiSubscriptionPoll, tag, dropped, data);
    h = layout!(h, AbiPublishOutcome, tag, receivers, message);
    h = layout!(h, FfiPoll<AbiSubscribeOutcome>);
    h = layout!(h, FfiPoll<AbiPublishOutcome>);
    h
};

/// The layout fingerprint of each released minor version of [`ABI_MAJOR`], index = minor, as
/// computed on 64-bit little-endian targets (x86_64, aarch64). Append only.
///
/// The entries are literals on purpose: when a change to a boundary type alters
/// [`LAYOUT_FINGERPRINT`], the build fails right here until someone decides whether the change is
/// a minor (append a new entry and bump [`ABI_MINOR`]) or a major (bump [`ABI_MAJOR`] and start a
/// new list).
#[cfg(all(target_pointer_width = "64", target_endian = "little"))]
pub const LAYOUT_FINGERPRINTS: &[u64] = &[
    0x4b3b_39ac_9316_3aa1,
    0xa46a_7a9c_351a_f831,
    0x083d_708b_54d1_fd41,
    // 1.3 changed no layout, only a promise: the request is lent (see `AbiRequest`).
    0x083d_708b_54d1_fd41,
    // 1.4 appended sockets, tasks and app state.
    0x5449_fd4f_18de_81c5,
    // 1.5 appended WebSockets and pub/sub.
    0x6b49_13be_143e_adb1,
];

/// On other targets older minors' layouts were never recorded: only plugins of the current minor
/// can match.
#[cfg(not(all(target_pointer_width = "64", target_endian = "little")))]
pub const LAYOUT_FINGERPRINTS: &[u64] = &{
    let mut table = [0; ABI_MINOR as usize + 1];
    table[ABI_MINOR as usize] = LAYOUT_FINGERPRINT;
    table
};

const _: () = assert!(LAYOUT_FINGERPRINTS.len() == ABI_MINOR as usize + 1);
const _: () = assert!(LAYOUT_FINGERPRINTS[ABI_MINOR as usize] == LAYOUT_FINGERPRINT);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_prefix_is_stable() {
        // The prefix a host reads before trusting anything else must never move.
        assert_eq!(offset_of!(DescriptorHeader, magic), 0);
        assert_eq!(offset_of!(DescriptorHeader, abi_major), 8);
        assert_eq!(offset_of!(DescriptorHeader, abi_minor), 12);
        assert_eq!(offset_of!(DescriptorHeader, layout_fingerprint), 16);
        assert_eq!(offset_of!(DescriptorHeader, size), 24);
        assert_eq!(offset_of!(AppDescriptor, header), 0);
    }

    #[test]
    fn magic_spells_berthapp() {
        assert_eq!(&MAGIC.to_be_bytes(), b"BERTHAPP");
    }

    #[test]
    fn fingerprint_table_ends_with_current_layout() {
        assert_eq!(LAYOUT_FINGERPRINTS.last(), Some(&LAYOUT_FINGERPRINT));
        assert_ne!(LAYOUT_FINGERPRINT, FNV_OFFSET);
    }

    #[test]
    fn fingerprint_sees_field_offsets() {
        #[repr(C)]
        struct A {
            x: u32,
            y: u64,
        }
        #[repr(C)]
        struct B {
            y: u64,
            x: u32,
        }
        // Same size and alignment, different offsets: the hashes must differ.
        assert_ne!(layout!(FNV_OFFSET, A, x, y), layout!(FNV_OFFSET, B, x, y));
    }
}
