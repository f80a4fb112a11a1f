//! End-to-end tests for Berth: every test starts the real `berth` binary on `127.0.0.1:0` with its
//! own temporary apps directory, talks to it over real sockets, and reads its log from stderr.
//!
//! Run with `cargo test -p berth-tests`. The first test to need them builds the server and the
//! app cdylibs with `cargo build --workspace` (set `BERTH_TESTS_NO_BUILD=1` to use what is
//! already in the target directory instead).
//!
//! # Layout
//!
//! * `harness`: finds or builds the artifacts, runs one `berth` process per test ([`Berth`]),
//!   the HTTP/1.1 and HTTP/2 clients the tests use, and every helper shared by several modules
//!   (`/proc` readings, timing assertions, replacing apps, the admin `/apps` document);
//! * `upstream`: servers the apps call out to: a small hyper server and a "hang" server that
//!   never answers and reports when its peer goes away;
//! * `data`: the `todo` app on PostgreSQL and the `counter` app on Redis through host sockets,
//!   and their faults: an unreachable or denied database, restarts, an exhausted pool, clients
//!   that leave mid-query, a swap under load;
//! * `services`: real data servers, PostgreSQL and Redis, each on a free loopback port in a
//!   temporary directory, stopped, restarted and dropped at a test's will;
//! * `cli`: flags, environment variables, `--help`, exit codes;
//! * `loading`: the apps directory, `GET /`, bad plugin files;
//! * `apps`: the sample apps (`hello`, `echo`, `fetch`, `gather`) over HTTP/1.1 and HTTP/2;
//! * `lifecycle`: panics, app logging, cancellation on client disconnect, graceful shutdown;
//! * `reload`: watching the apps directory, swaps under load, retiring old versions, broken
//!   replacements, removal, the memory cost of swaps;
//! * `app_config`: `berth.toml`, app settings and `init`/`shutdown` hooks, config errors;
//! * `admin`: the admin listener's `/healthz`, `/readyz`, `/apps` and reload endpoint;
//! * `streaming`: `upload`, `proxy` and `clock`: 1 GiB each way in bounded memory, server-sent
//!   events over time, and a stream stopped when its client leaves;
//! * `tls`: HTTPS on the listener (HTTP/1.1 and HTTP/2 by ALPN, WebSockets), certificate
//!   errors at start, apps fetching from an HTTPS upstream signed by an extra CA;
//! * `limits`: slow-loris clients, oversized heads and bodies (431, 413), the request timeout
//!   (504), the keep-alive idle timeout, a connection flood past the connection limit;
//! * `websocket`: WebSockets on `ws-echo`, `testkit` and `swap`: echo and the closing
//!   handshake, the host's limits (1009, idle 1001, half-open clients dropped), the `Origin`
//!   allowlist, a panicking session (1011), swaps (old sockets keep their version, a reload
//!   grace closes them with 1012), SIGTERM (1001 to every socket, an SSE stream ended);
//! * `conformance`: clients nobody here wrote, from `tests/clients` in a virtualenv of pinned
//!   packages: Python's `websockets` against `ws-echo`, the Autobahn cases (run by `kosoku`)
//!   against `ws-echo`, and `chat` in two pages of headless Chromium driven by Playwright, with
//!   the in-process broker and with Redis (screenshots in `target/test-artifacts/`);
//! * `outbound`: the outbound allowlist (no connection for a denied host, whatever the `Host`
//!   header), the inbound deadline bounding outbound calls, the outbound concurrency cap;
//! * `pubsub`: the pub/sub broker's settings and its admin `/pubsub` document, a Redis that
//!   is down at start;
//! * `chat`: the `chat` sample on the broker, in memory and on Redis: a thousand WebSockets fed
//!   by `redis-cli PUBLISH` or a `POST`, server-sent events, a reader that never reads (no one
//!   waits for it and memory stays bounded, under both overflow policies), a Redis restart
//!   while subscribed;
//! * `workers`: `--workers N` with the `faults` fixture: crashes, aborts and stack overflows
//!   under load (only the requests in flight on the dead worker fail), the hang watchdog, a
//!   crash loop, recycling (`--max-requests`, `--max-lifetime`, `--worker-max-rss`, SIGHUP),
//!   SIGTERM's drain, workers ending with a SIGKILLed supervisor, the admin API asked of every
//!   worker, and the single-process `/healthz` while the runtime is blocked.
//!
//! [`Berth`]: harness::Berth

mod admin;
mod app_config;
mod apps;
mod chat;
mod cli;
mod conformance;
mod data;
mod harness;
mod lifecycle;
mod limits;
mod loading;
mod outbound;
mod pubsub;
mod reload;
mod services;
mod streaming;
mod tls;
mod upstream;
mod websocket;
mod workers;
