//! Write HTTP apps for the [Berth](https://crates.io/crates/berth-app) application server.
//!
//! An app is one async function from a [`Request`] and a [`Host`] to a [`Response`], compiled as a
//! `cdylib` and exported with [`export_app!`]. Berth loads the library, mounts the app at
//! `/<name>`, and polls its futures on the server's runtime. While handling a request the app
//! awaits outbound HTTP and timers through the [`Host`]:
//!
//! ```
//! use berth_app::{Host, Request, Response, StatusCode};
//!
//! /// Fetches `?url=` and answers with the first 20 bytes of its body.
//! async fn app(req: Request, host: Host) -> Response {
//!     let Some(url) = req.query_param("url") else {
//!         return Response::text("missing ?url=\n").with_status(StatusCode::BAD_REQUEST);
//!     };
//!     match host.get(url).await {
//!         Ok(upstream) => match upstream.bytes().await {
//!             Ok(body) => Response::bytes(body.slice(..body.len().min(20)), "application/octet-stream"),
//!             Err(err) => Response::text(format!("{err}\n")).with_status(StatusCode::BAD_GATEWAY),
//!         },
//!         Err(err) => Response::text(format!("{err}\n")).with_status(StatusCode::BAD_GATEWAY),
//!     }
//! }
//!
//! berth_app::export_app!(name = "first20", handler = app);
//! ```
//!
//! The crate's `Cargo.toml` needs `crate-type = ["cdylib"]` (add `"rlib"` to unit-test the
//! handler with the [`testing`] mock host, behind the `testing` feature).
//!
//! # No runtime inside the app
//!
//! A plugin carries its own copy of every crate it links, tokio included, and that copy has no
//! reactor: `tokio::time::sleep`, `tokio::spawn` or tokio sockets panic with "there is no
//! reactor running". Use [`Host::sleep`], [`Host::timeout`] and [`Host::fetch`] instead;
//! `futures` combinators such as [`futures::future::join_all`] work as usual.
//!
//! # App state
//!
//! What an app builds once and shares between requests (a connection pool, a parsed
//! configuration, a cache) is returned by its `init` hook, as ASGI's lifespan state: the host
//! keeps it for that version of the app, and requests borrow it with [`Host::state`], typed
//! (a wrong type gives `None`, never a wrong value) and without locking. Interior mutability
//! (atomics, a `Mutex`) is the app's choice where it needs to change. The `shutdown` hook
//! reads it the same way, to close things. The host lets go of it when the version is
//! retired (after `shutdown`); a `Host` that has read it keeps it alive until dropped.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use berth_app::{AppConfig, Host, Request, Response};
//!
//! struct Counter {
//!     greeting: String,
//!     hits: AtomicU64,
//! }
//!
//! async fn init(config: AppConfig, _host: Host) -> Result<Counter, String> {
//!     let greeting = config.get_or("greeting", "hello").to_owned();
//!     Ok(Counter { greeting, hits: AtomicU64::new(0) })
//! }
//!
//! async fn app(_req: Request, host: Host) -> Response {
//!     let Some(state) = host.state::<Counter>() else {
//!         return Response::text("no state\n");
//!     };
//!     let n = state.hits.fetch_add(1, Ordering::Relaxed) + 1;
//!     Response::text(format!("{} #{n}\n", state.greeting))
//! }
//!
//! berth_app::export_app!(name = "counter", handler = app, init = init);
//! ```
//!
//! # Sockets and tasks
//!
//! [`Host::connect`] opens a TCP connection (TLS optional) on the host's reactor, for the
//! hosts and ports `berth.toml` allows the app; the [`HostStream`] it gives implements tokio's
//! and futures' `AsyncRead`/`AsyncWrite`, so protocol crates that take a generic stream work
//! on it. [`Host::spawn`] runs a future as a task of the host's (a connection's driver, say),
//! cancelled when its [`JoinHandle`] is dropped. The features `postgres` and `redis` build
//! connection pools on both: see `berth_app::postgres` and `berth_app::redis`.
//!
//! # WebSockets and pub/sub
//!
//! The host runs the WebSocket protocol on its reactor, where a plugin cannot (handshake,
//! framing, fragmentation, UTF-8 checks, ping and pong, size limits, idle time-outs); the app
//! sees whole [`Message`]s. A handshake arrives as an ordinary request: [`Request::websocket`]
//! is `Some` for a valid one, and [`WebSocketUpgrade::accept`] gives the response to return;
//! once the host has answered `101` it runs the session closure with the [`WebSocket`] and a
//! [`Host`] of the session's own (no request deadline). Any other response rejects the
//! handshake. Sends wait while the host's bounded send queue is full (backpressure), and fail
//! with [`SendError::Closed`] once the socket is closing, never with a panic; a session that
//! panics closes its socket with 1011.
//!
//! Pub/sub is a host capability too: [`Host::subscribe`] gives a [`Subscription`], a stream of
//! a channel's messages, and [`Host::publish`] sends one. The host fans each message out to
//! every subscriber through a bounded queue of its own, so a slow subscriber never slows the
//! others (by policy it loses its oldest messages, counted in [`Subscription::dropped`], or its
//! socket is closed with 1008); with Redis configured, every Berth instance shares the channels.
//!
//! Both together, as the asyncio talk's demo does it: a WebSocket that forwards the channel to
//! the client and publishes what the client sends. [`split`](WebSocket::split) lets one future
//! wait on both at once:
//!
//! ```
//! use std::pin::pin;
//! use berth_app::futures::future::{Either, select};
//! use berth_app::{Host, Message, Request, Response, StatusCode, WebSocket};
//!
//! async fn app(req: Request, host: Host) -> Response {
//!     let Some(upgrade) = req.websocket() else {
//!         return Response::text("connect with a WebSocket\n")
//!             .with_status(StatusCode::UPGRADE_REQUIRED);
//!     };
//!     upgrade.accept(&host, relay)
//! }
//!
//! /// Runs once the connection is upgraded, until the client or the channel ends.
//! async fn relay(socket: WebSocket, host: Host) {
//!     // The session's own host: a subscription that falls behind closes this socket.
//!     let Ok(mut news) = host.subscribe("news").await else {
//!         return; // dropping the socket closes it (1000)
//!     };
//!     let (mut to_client, mut from_client) = socket.split();
//!     loop {
//!         match select(pin!(news.next()), pin!(from_client.recv())).await {
//!             Either::Left((Some(published), _)) => {
//!                 if to_client.send(Message::binary(published)).await.is_err() {
//!                     break; // the socket is closing
//!                 }
//!             }
//!             Either::Right((Some(Message::Text(text)), _)) => {
//!                 let _receivers = host.publish("news", text.into_bytes()).await;
//!             }
//!             Either::Right((Some(Message::Binary(_)), _)) => {}
//!             // The channel ended, the client closed, or it went away.
//!             Either::Left((None, _)) | Either::Right((Some(Message::Close(_)) | None, _)) => break,
//!         }
//!     }
//! }
//!
//! berth_app::export_app!(name = "news", handler = app);
//! ```
//!
//! With the `testing` feature, [`testing::MockHost`] accepts sessions too and hands the test
//! the client's end, and has an in-memory broker; the `ws-echo` and `chat` sample apps test
//! themselves that way.
//!
//! # Panics
//!
//! A panic in the handler, or while streaming its body, is caught inside the plugin: the client
//! gets a `500`, the host logs the message with the app's name, and the next request runs
//! normally.
//!
//! # Layout
//!
//! From the bottom up; each module imports only from the ones listed before it, except
//! `ffi::export`, which sits above the SDK types:
//!
//! * [`abi`]: the raw C ABI shared with the host (app authors never touch it);
//! * `error`: [`BodyError`] and [`HeaderError`], shared by the SDK types (and, for
//!   `BodyError`, by the boundary code below them);
//! * `config`: [`AppConfig`], the settings an `init` hook receives;
//! * `ffi`: the one module tree with `unsafe` code. Its lower layer converts between the ABI
//!   and plain Rust values for both sides (panics, futures and wakers, buffers and
//!   [`Utf8Bytes`], headers, bodies, responses, outcomes, settings, socket addresses, the
//!   host's capability table, the lent request, WebSocket messages, halves and sessions,
//!   pub/sub outcomes and subscriptions); the host uses it too. Its `ffi::export` sits above
//!   the SDK types: the descriptor and handler glue behind [`export_app!`];
//! * `headers`: an upstream response's headers, turned into a map when first read, and the
//!   conversion every header setter shares;
//! * `body`: [`Body`], request and response bodies;
//! * `request`: [`Request`] and [`RequestBuilder`];
//! * `response`: [`Response`] and [`IntoResponse`];
//! * `net`: [`HostStream`], a connection the host opened, and [`ConnectOptions`];
//! * `task`: [`JoinHandle`] and [`JoinError`], for tasks spawned on the host;
//! * `host`: [`Host`] and what it returns ([`OutboundRequest`], [`Fetch`], [`FetchResponse`],
//!   [`Sleep`], [`Timeout`], [`Connect`], [`State`]), the host's capabilities (its mock
//!   backend, behind `testing`, names the mock types of the two modules below);
//! * `websocket`: [`Request::websocket`] and the [`WebSocketUpgrade`] it gives, the
//!   [`WebSocket`] a session gets and its halves ([`WsSender`], [`WsReceiver`]), [`Message`],
//!   [`CloseFrame`] and [`SendError`];
//! * `pubsub`: [`Host::subscribe`] and [`Host::publish`], the [`Subscription`] and
//!   [`PubSubError`] they give;
//! * `postgres` and `redis` (features of the same names): database clients over host
//!   sockets and tasks;
//! * [`testing`]: a mock host for unit tests (feature `testing`), with a WebSocket client's end
//!   and an in-memory pub/sub broker.
#![deny(missing_docs)]

pub mod abi;
mod body;
mod config;
mod error;
#[doc(hidden)]
pub mod ffi;
mod headers;
mod host;
mod net;
#[cfg(feature = "postgres")]
pub mod postgres;
mod pubsub;
#[cfg(feature = "redis")]
pub mod redis;
mod request;
mod response;
mod task;
#[cfg(feature = "testing")]
pub mod testing;
mod websocket;

pub use body::Body;
pub use bytes::Bytes;
pub use config::AppConfig;
pub use error::{BodyError, HeaderError, error_chain};
pub use ffi::Utf8Bytes;
pub use host::{
    Elapsed, Fetch, FetchError, FetchErrorKind, FetchResponse, Host, Level, OutboundRequest, Sleep,
    State, Timeout,
};
pub use http::{self, HeaderMap, Method, StatusCode, Uri, Version, header};
pub use net::{Connect, ConnectOptions, HostStream};
pub use pubsub::{PubSubError, PubSubErrorKind, Publish, Subscribe, Subscription};
pub use request::{Request, RequestBuilder};
pub use response::{IntoResponse, Response};
pub use task::{JoinError, JoinHandle};
pub use websocket::{
    CloseFrame, Message, SendError, WebSocket, WebSocketUpgrade, WsReceiver, WsSender,
};

/// Runtime-agnostic future and stream combinators (`join`, `select`, `join_all`, streams).
pub mod futures {
    pub use futures_util::{FutureExt, StreamExt, TryFutureExt, TryStreamExt};
    pub use futures_util::{future, stream};
}

/// Exports an async handler as a Berth app.
///
/// ```ignore
/// async fn app(req: Request, host: Host) -> Response { Response::text("hi\n") }
/// berth_app::export_app!(name = "hello", version = "0.1.0", handler = app);
/// ```
///
/// * `version` may be left out: it defaults to the crate's version.
/// * `init = f` (optional) runs once before the app is mounted, like ASGI's lifespan startup:
///   `async fn f(config: AppConfig, host: Host) -> Result<S, E>` (or `()`), with `E:
///   Display`. The app's settings from `berth.toml` are in `config`. An error, a panic or a
///   time-out keeps the app from being mounted, and the reason is reported. The `S` it returns
///   (any `Send + Sync + 'static` type; `()` for none) becomes the app version's state, which
///   every request and the `shutdown` hook read with [`Host::state`]; see *App state* in the
///   crate docs.
/// * `shutdown = g` (optional) runs once before a version of the app is retired (replaced,
///   removed, or the server stopping), after its last request: `async fn g(host: Host)` (or
///   returning `Result<(), E>`).
///
/// The handler may return anything that implements [`IntoResponse`]. The macro emits the one
/// symbol Berth looks for (`berth_app_descriptor`), carrying the ABI version and layout
/// fingerprint the host checks before calling anything else.
#[macro_export]
macro_rules! export_app {
    (
        name = $name:expr
        $(, version = $version:expr)?
        , handler = $handler:path
        $(, init = $init:path)?
        $(, shutdown = $shutdown:path)?
        $(,)?
    ) => {
        #[doc(hidden)]
        struct __BerthApp;

        impl $crate::__private::App for __BerthApp {
            $(const HAS_INIT: bool = { let _ = $init; true };)?
            $(const HAS_SHUTDOWN: bool = { let _ = $shutdown; true };)?

            fn handle(req: $crate::Request, host: $crate::Host) -> $crate::__private::HandleFuture {
                $crate::__private::serve($handler(req, host))
            }

            $(
                fn init(config: $crate::AppConfig, host: $crate::Host) -> $crate::__private::HookFuture {
                    $crate::__private::init_hook(config, host, $init)
                }
            )?

            $(
                fn shutdown(host: $crate::Host) -> $crate::__private::HookFuture {
                    ::std::boxed::Box::pin(async move {
                        $crate::__private::IntoHookResult::into_hook_result($shutdown(host).await)
                    })
                }
            )?
        }

        $crate::ffi_fn! {
            /// The Berth app descriptor (ABI entry point).
            ///
            /// # Safety
            /// None needed: it returns a pointer to a `static`.
            #[unsafe(no_mangle)]
            pub unsafe fn berth_app_descriptor() -> *const $crate::abi::AppDescriptor {
                static DESCRIPTOR: $crate::__private::Descriptor =
                    $crate::__private::Descriptor::new::<__BerthApp>(
                        $name,
                        $crate::__berth_version!($($version)?),
                    );
                DESCRIPTOR.as_ptr()
            } ?= |_| ::core::ptr::null()
        }
    };
}

/// Not public API: the version `export_app!` records when none is given.
#[doc(hidden)]
#[macro_export]
macro_rules! __berth_version {
    () => {
        ::core::env!("CARGO_PKG_VERSION")
    };
    ($version:expr) => {
        $version
    };
}

/// Not public API: what [`export_app!`] expands to.
#[doc(hidden)]
pub mod __private {
    use std::any::{Any, TypeId};
    use std::future::Future;

    pub use crate::ffi::export::{App, Descriptor, HookFuture, serve};

    /// A handler's future in ABI form, as [`serve`] makes it.
    pub type HandleFuture = crate::abi::FfiFuture<crate::abi::AbiHandleOutcome>;

    /// What an `init` or `shutdown` hook may return.
    pub trait IntoHookResult {
        /// Converts into the hook's outcome.
        fn into_hook_result(self) -> Result<(), String>;
    }

    impl IntoHookResult for () {
        fn into_hook_result(self) -> Result<(), String> {
            Ok(())
        }
    }

    impl<E: std::fmt::Display> IntoHookResult for Result<(), E> {
        fn into_hook_result(self) -> Result<(), String> {
            self.map_err(|e| e.to_string())
        }
    }

    /// What an `init` hook may return: `()`, or `Result<S, E>` whose `S` becomes the app's
    /// state (a `()` state is not stored).
    pub trait IntoInitResult {
        /// Converts into the hook's outcome and the state to keep.
        fn into_init_result(self) -> Result<Option<Box<dyn Any + Send + Sync>>, String>;
    }

    impl IntoInitResult for () {
        fn into_init_result(self) -> Result<Option<Box<dyn Any + Send + Sync>>, String> {
            Ok(None)
        }
    }

    impl<S: Any + Send + Sync, E: std::fmt::Display> IntoInitResult for Result<S, E> {
        fn into_init_result(self) -> Result<Option<Box<dyn Any + Send + Sync>>, String> {
            let state = self.map_err(|e| e.to_string())?;
            if TypeId::of::<S>() == TypeId::of::<()>() {
                return Ok(None);
            }
            Ok(Some(Box::new(state)))
        }
    }

    /// Runs the author's `init` and hands the state it returns to the host.
    pub fn init_hook<I, F>(config: crate::AppConfig, host: crate::Host, init: I) -> HookFuture
    where
        I: FnOnce(crate::AppConfig, crate::Host) -> F,
        F: Future + Send + 'static,
        F::Output: IntoInitResult,
    {
        let keep = host.clone();
        let future = init(config, host);
        Box::pin(async move {
            match future.await.into_init_result()? {
                Some(state) => keep.set_state(state),
                None => Ok(()),
            }
        })
    }
}
