//! Worker processes (`--workers N`): a supervisor that runs no app code, and N workers that
//! each load every app and serve the shared listener, as gunicorn's arbiter and granian do.
//!
//! An app that crashes (a segfault in a C library, an abort, a stack overflow) or blocks its
//! thread then takes one worker down, not the server: the supervisor logs how the worker ended
//! and which app call and request it was inside (from the worker's call table, in memory both
//! map: [`crate::host::calls`]), and starts a replacement. The requests in flight on that
//! worker fail (their connections are reset); every other request is served.
//!
//! * [`supervisor`]: binds the listeners, starts the workers by running this binary again
//!   (fork and exec: no fork of a process with threads), replaces the dead, the stuck and the
//!   stalled (the watchdog), replaces them one by one on SIGHUP, drains them on SIGTERM, and
//!   serves the admin API (`/workers`, and the apps' paths asked of every worker);
//! * [`worker`]: the worker side: takes its descriptors, serves, reports ready, answers the
//!   supervisor's admin requests, and exits when the supervisor is gone;
//! * `control`: the messages and descriptors between them, over a Unix socket pair;
//! * `exit`: why a worker ended, in words.

mod control;
mod exit;
pub mod supervisor;
pub mod worker;

pub use supervisor::Supervisor;
pub use worker::Identity;
