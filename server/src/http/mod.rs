//! The HTTP side, in a request's order: the accept loop ([`listener`]), one connection with
//! its protocol and timeouts (`connection`, `idle`), routing a request to its app and waiting
//! for the answer (`dispatch`), the response that goes back (`response`), logged by
//! `access_log`, or the switch to a WebSocket (`upgrade`); and the shutdown signal that
//! connections and streaming responses watch (`shutdown`).

mod access_log;
mod connection;
mod dispatch;
mod idle;
pub mod listener;
mod response;
mod shutdown;
mod upgrade;

pub use listener::{bind, bind_reuse_port, reserve_port, serve};
pub use response::{AppBody, Chunk, ResponseBody};
