//! The HTTP side, in a request's order: the accept loop ([`listener`]), one connection with
//! its protocol and timeouts (`connection`, `idle`), routing a request to its app and waiting
//! for the answer (`dispatch`), and the response that goes back (`response`), logged by
//! `access_log`.

mod access_log;
mod connection;
mod dispatch;
mod idle;
pub mod listener;
mod response;

pub use listener::{bind, serve};
pub use response::{AppBody, Chunk, ResponseBody};
