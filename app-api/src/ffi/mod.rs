//! The boundary module: every `unsafe` block of this crate lives in this module tree.
//!
//! It turns the raw [`abi`](crate::abi) types into safe Rust values and back, for both sides: the
//! plugin glue behind [`export_app!`](crate::export_app) uses it, and so does the host, so the two
//! directions of every conversion are one piece of code. App authors never need it.
//!
//! Rules kept throughout:
//! * every `extern "C"` function defined here (and the descriptor symbol `export_app!` emits,
//!   and the host's capability table) is written with [`ffi_fn!`](crate::ffi_fn), which catches
//!   panics and returns the stated fallback (an error chunk, an error outcome, nothing, or an
//!   abort), so no unwind ever crosses the boundary;
//! * every owned pointer received is released exactly once, through the function carried next to
//!   it, on every path including errors.
//!
//! # Layers
//!
//! Below the SDK types (they import from these; these import none of them):
//! * `macros`: [`ffi_fn!`](crate::ffi_fn);
//! * `panic`: catching panics at the boundary, and the plugin's quiet panic hook;
//! * `future`: Berth's own `FfiFuture` and wakers that keep their identity across;
//! * `buf`: borrowed strings (`AbiStr`), owned buffers (`AbiBuf`), chunks read in place;
//! * `headers`: header arrays lent across (`HeaderList`) and read back;
//! * `body`: bodies handed over as streams, and received ones (`ForeignBody`);
//! * `response`: responses handed over and taken apart;
//! * `outcome`: handler, hook and fetch outcomes (`HandleFailure`);
//! * `settings`: an app's settings lent to its `init` hook;
//! * `socket`: sockets' poll results and connect outcomes, and the plugin's open socket and
//!   connect in flight (ABI 1.4);
//! * `addr`: socket addresses;
//! * `host_handle`: the plugin's calls into the host's capability table (`HostHandle`), the
//!   app state handed to the host among them;
//! * `task`: a spawned future as the ABI's task, and the slot its output comes back through;
//! * `websocket`: WebSocket messages and receive polls, the plugin's open socket split into a
//!   receiving and a sending half, and the session the host starts on upgrade (ABI 1.5);
//! * `pubsub`: subscribe, publish and subscription-poll outcomes, and the plugin's open
//!   subscription and its subscribe and publish in flight (ABI 1.5);
//! * `lent`: the request the host lends the plugin, read in place.
//!
//! Above the SDK types:
//! * `export`: the plugin's descriptor and the handler and hook glue behind `export_app!`,
//!   which builds a `Request` and a `Host` from ABI values and hands the answer back.
//!
//! Each module's unit tests sit at its end; `test_support` holds the helpers they share.
#![allow(unsafe_code)]

// First, so that `ffi_fn!` is in scope in the modules declared after it.
#[macro_use]
mod macros;

mod addr;
pub(crate) mod body;
pub(crate) mod buf;
pub(crate) mod export;
pub(crate) mod future;
pub(crate) mod headers;
pub(crate) mod host_handle;
pub(crate) mod lent;
pub(crate) mod outcome;
pub(crate) mod panic;
pub(crate) mod pubsub;
pub(crate) mod response;
pub(crate) mod settings;
pub(crate) mod socket;
pub(crate) mod task;
pub(crate) mod websocket;

pub use addr::{socket_addr_from_abi, socket_addr_to_abi};
pub use body::{ChunkStream, ForeignBody};
pub use buf::{BoundaryError, ForeignChunk, Utf8Bytes};
pub use future::{ContextExt, IntoFfi, Panicked, is_foreign_waker};
pub use headers::{HeaderList, headers_from_abi};
pub use host_handle::HostHandle;
pub use outcome::HandleFailure;
pub use panic::{catch, panic_message};
pub use settings::SettingList;
pub use socket::{io_error_from_abi, io_error_kind};
pub use websocket::SESSION_DONE;

use crate::abi::{
    AbiAppState, AbiBody, AbiBuf, AbiConnectOutcome, AbiFetchOutcome, AbiHandleOutcome,
    AbiHookOutcome, AbiHost, AbiPublishOutcome, AbiResponse, AbiSocket, AbiSocketVTable,
    AbiSubscribeOutcome, AbiSubscription, AbiSubscriptionVTable, AbiWebSocket, AbiWsMessage,
    AbiWsRecv, AbiWsSession, AbiWsVTable, AppDescriptor, HostVTable,
};

// SAFETY (for all the `Send`/`Sync` impls below): the structs only carry pointers whose targets
// the ABI contract makes thread-safe to move — bodies, buffers, responses, sockets, app states and
// host contexts, WebSockets, their messages and sessions, and subscriptions are used by one
// thread at a time and their release functions may run on any thread; descriptors and vtables
// are immutable statics.
unsafe impl Send for AbiBuf {}
unsafe impl Send for AbiBody {}
unsafe impl Send for AbiResponse {}
unsafe impl Send for AbiHandleOutcome {}
unsafe impl Send for AbiFetchOutcome {}
unsafe impl Send for AbiHookOutcome {}
unsafe impl Send for AbiHost {}
unsafe impl Sync for AbiHost {}
unsafe impl Sync for HostVTable {}
unsafe impl Send for AbiSocket {}
unsafe impl Send for AbiConnectOutcome {}
unsafe impl Send for AbiAppState {}
unsafe impl Sync for AbiSocketVTable {}
unsafe impl Sync for AppDescriptor {}
unsafe impl Send for AbiWsSession {}
unsafe impl Send for AbiWebSocket {}
unsafe impl Send for AbiWsMessage {}
unsafe impl Send for AbiWsRecv {}
unsafe impl Sync for AbiWsVTable {}
unsafe impl Send for AbiSubscription {}
unsafe impl Send for AbiSubscribeOutcome {}
unsafe impl Send for AbiPublishOutcome {}
unsafe impl Sync for AbiSubscriptionVTable {}

#[cfg(test)]
mod test_support;
