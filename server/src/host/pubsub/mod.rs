//! Pub/sub for apps (ABI 1.5): one [`Broker`] per process, shared by every app and version,
//! so that apps share channels by name.
//!
//! The broker fans out: it holds *one* upstream subscription per channel, however many
//! subscribers it has here, and hands each message to every local subscriber through a
//! bounded queue of its own (`pubsub_queue`, default 64). The fan-out never waits for a
//! subscriber, so one that does not keep up never slows the others; when its queue is full,
//! [`Overflow`] (`pubsub_overflow`) says what happens to it: its oldest message is dropped and
//! counted (`drop-oldest`, the default), or its subscription ends and the WebSocket whose
//! session made it is closed with 1008 (`close`). Either way its memory is bounded by its
//! queue. When the last local subscriber of a channel goes, the upstream subscription goes too.
//!
//! Backends ([`Backend`]):
//!
//! * **memory** (the default): the broker is its own upstream. Publishing hands the message to
//!   the channel's local subscribers and returns how many there were. Right for one instance.
//!   With worker processes, each worker's broker also hands what its apps publish to a
//!   [`Relay`], through which the supervisor delivers it to every other worker
//!   ([`Broker::deliver_relayed`]); the count publishing returns is then this worker's
//!   subscribers only.
//! * **redis** (`pubsub = "redis://host:port/"`): the `redis` submodule holds one SUBSCRIBE
//!   connection for the process and a multiplexed connection for PUBLISH, whose reply (the
//!   number of subscribed connections: one per Berth instance) is what publishing returns.
//!   Published messages reach local subscribers the way everyone else's do, through Redis.
//!   The connection reconnects with backoff and resubscribes every channel on its own,
//!   logging the gap (a warning when lost, an info line with how long it was down when back).
//!   Redis does not keep messages for a subscriber that is away: what is published during a
//!   gap is lost. A message from Redis larger than `pubsub_max_message` (published by someone
//!   other than a Berth app, whose messages are checked) is dropped with a warning, so no
//!   queue holds more than that per message.
//!
//!   Subscribing while Redis is down: if the broker has *never* connected, subscribing fails
//!   (`SUB_FAILED`, naming the URL and the error), since nothing says the URL is right; once
//!   it has connected, a subscription made during a gap is registered and starts receiving
//!   when the connection is back, as do the ones that were open. Publishing during a gap
//!   fails (`SUB_FAILED`). This Redis is the host's own, configured by the operator, so it is
//!   not subject to any app's outbound allowlist.
//!
//! Each app version reaches the broker through its [`AppPubSub`], which ends the version's
//! subscriptions when it is retired.

mod queue;
mod redis;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde_json::{Value, json};

pub use queue::Next;
use queue::{Pushed, Queue};

use crate::host::SessionSocket;

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 256;
/// The default length of each subscriber's queue (`pubsub_queue`).
pub const DEFAULT_QUEUE: usize = 64;
/// The default largest message (`pubsub_max_message`): 1 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// The close code for a WebSocket whose subscription fell behind under [`Overflow::Close`]:
/// 1008, policy violation.
pub const FELL_BEHIND_CODE: u16 = 1008;
/// The close reason sent with [`FELL_BEHIND_CODE`] (a close reason is at most 123 bytes).
pub const FELL_BEHIND_REASON: &str = "subscriber fell behind";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The broker's settings: the `pubsub*` keys of `berth.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubConfig {
    /// Where messages go between subscribers (`pubsub`, default `memory`).
    pub backend: Backend,
    /// How many messages each subscriber's queue holds (`pubsub_queue`, default 64).
    pub queue: usize,
    /// What happens to a subscriber whose queue is full (`pubsub_overflow`, default
    /// `drop-oldest`).
    pub overflow: Overflow,
    /// The largest message an app may publish, in bytes (`pubsub_max_message`, default 1 MiB).
    pub max_message: usize,
}

impl Default for PubSubConfig {
    fn default() -> Self {
        PubSubConfig {
            backend: Backend::Memory,
            queue: DEFAULT_QUEUE,
            overflow: Overflow::DropOldest,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

/// Where the broker's messages go between subscribers.
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// In this process only.
    Memory,
    /// Through the Redis at this URL (`redis://host[:port][/db]`), shared with every Berth
    /// instance that uses it.
    Redis(String),
}

impl Backend {
    /// What `pubsub` accepts, for error messages.
    pub const EXPECTED: &'static str =
        "expected \"memory\" or a Redis URL like \"redis://127.0.0.1:6379/\"";

    /// The name the admin API shows: `memory` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis(_) => "redis",
        }
    }
}

/// The URL without its password, for logs and errors.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Memory => f.write_str("Memory"),
            Backend::Redis(url) => write!(f, "Redis({:?})", redacted(url)),
        }
    }
}

impl FromStr for Backend {
    type Err = String;

    /// `memory`, or a `redis://` URL that the `redis` crate accepts. `rediss://` (TLS) and
    /// Unix sockets are refused: the host's Redis client is built without them.
    fn from_str(value: &str) -> Result<Self, String> {
        let text = value.trim();
        if text.eq_ignore_ascii_case("memory") {
            return Ok(Backend::Memory);
        }
        let scheme = text.split_once("://").map(|(scheme, _)| scheme);
        match scheme {
            Some("redis") => {}
            Some("rediss") => {
                return Err(format!(
                    "{value:?}: TLS to the pub/sub Redis (rediss://) is not supported; {}",
                    Backend::EXPECTED
                ));
            }
            _ => {
                return Err(format!(
                    "{value:?} is not a pub/sub backend; {}",
                    Backend::EXPECTED
                ));
            }
        }
        match ::redis::Client::open(text) {
            Ok(_) => Ok(Backend::Redis(text.to_owned())),
            Err(err) => Err(format!(
                "{:?} is not a valid Redis URL ({err}); {}",
                redacted(text),
                Backend::EXPECTED
            )),
        }
    }
}

/// What happens to a subscriber whose queue is full when a message arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop its oldest queued message, counted and reported to it with the next message it
    /// reads (`drop-oldest`).
    DropOldest,
    /// End its subscription, and close the WebSocket whose session made it with 1008
    /// (`close`): the client learns that it missed messages.
    Close,
}

impl Overflow {
    /// What `pubsub_overflow` accepts, for error messages.
    pub const EXPECTED: &'static str = "expected \"drop-oldest\" or \"close\"";

    /// Its name in `berth.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Overflow::DropOldest => "drop-oldest",
            Overflow::Close => "close",
        }
    }
}

impl FromStr for Overflow {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim() {
            "drop-oldest" => Ok(Overflow::DropOldest),
            "close" => Ok(Overflow::Close),
            _ => Err(format!(
                "{value:?} is not an overflow policy; {}",
                Overflow::EXPECTED
            )),
        }
    }
}

/// Why a subscribe or publish failed; each is one `SUB_*` tag for the app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PubSubError {
    /// The channel name or the message is not acceptable (`SUB_INVALID`): the app's mistake.
    #[error("{0}")]
    Invalid(String),
    /// The backend could not do it (`SUB_FAILED`): Redis unreachable, the version retired.
    #[error("{0}")]
    Failed(String),
}

/// Whether an upstream subscription is in place yet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Upstream {
    /// Asked for, not confirmed.
    Pending,
    /// In place (or, during a Redis gap, registered to be renewed on reconnect).
    Ready,
    /// Could not be made.
    Failed(String),
}

/// One channel with local subscribers.
struct Channel {
    name: Arc<str>,
    subscribers: Mutex<HashMap<u64, Subscriber>>,
    /// Whether its upstream subscription is in place; subscribers wait for it.
    upstream: tokio::sync::watch::Sender<Upstream>,
    /// Messages that came through it in this process.
    published: AtomicU64,
    /// Messages its subscribers read.
    delivered: AtomicU64,
    /// Messages its subscribers lost by falling behind.
    dropped: AtomicU64,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A local subscriber, as its channel's fan-out sees it.
#[derive(Debug)]
struct Subscriber {
    queue: Arc<Queue>,
    /// The WebSocket to close should it fall behind under [`Overflow::Close`].
    session: Option<Arc<dyn SessionSocket>>,
}

/// What the broker's handles share.
#[derive(Debug)]
struct Shared {
    config: PubSubConfig,
    /// Channels with at least one local subscriber, by name. Lock order: this map, then a
    /// channel's subscribers. Every upstream (un)subscribe is asked for while holding it, so
    /// the upstream sees them in the order the map changed.
    channels: Mutex<HashMap<Arc<str>, Arc<Channel>>>,
    next_id: AtomicU64,
    /// `None` for the memory backend.
    upstream: Option<redis::RedisUpstream>,
    /// With the memory backend in a worker process: where published messages also go.
    relay: std::sync::OnceLock<Relay>,
}

/// Where a worker's in-memory broker also sends each message its apps publish (channel,
/// payload), for the supervisor to deliver to the other workers.
pub struct Relay(pub Box<RelayFn>);

/// What a [`Relay`] calls with each message: its channel and payload.
pub type RelayFn = dyn Fn(&str, &Bytes) + Send + Sync;

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Relay")
    }
}

/// The process's pub/sub broker: cheap to clone, every clone the same broker.
#[derive(Debug, Clone)]
pub struct Broker(Arc<Shared>);

impl Broker {
    /// Starts the broker `config` describes. With Redis it waits for the first connection
    /// attempt (at most a few seconds) and logs its outcome; a Redis that cannot be reached is
    /// a warning, not an error: the broker keeps trying in the background (see the module
    /// docs for what subscribing and publishing do meanwhile). Needs a tokio runtime.
    pub async fn start(config: &PubSubConfig) -> Broker {
        match &config.backend {
            Backend::Memory => Broker::memory(config),
            Backend::Redis(url) => {
                let broker = Broker(Arc::new_cyclic(|weak| Shared {
                    config: config.clone(),
                    channels: Mutex::new(HashMap::new()),
                    next_id: AtomicU64::new(1),
                    upstream: Some(redis::RedisUpstream::start(url, weak.clone())),
                    relay: std::sync::OnceLock::new(),
                }));
                if let Some(upstream) = &broker.0.upstream {
                    upstream.first_attempt().await;
                }
                broker
            }
        }
    }

    /// An in-process broker with `config`'s limits (whatever its backend says).
    pub fn memory(config: &PubSubConfig) -> Broker {
        Broker(Arc::new(Shared {
            config: PubSubConfig {
                backend: Backend::Memory,
                ..config.clone()
            },
            channels: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            upstream: None,
            relay: std::sync::OnceLock::new(),
        }))
    }

    /// The settings it runs with.
    pub fn config(&self) -> &PubSubConfig {
        &self.0.config
    }

    /// Checks a channel name: not empty, at most [`MAX_CHANNEL_LEN`] bytes (UTF-8 is checked
    /// where the name arrives).
    fn check_channel(channel: &str) -> Result<(), PubSubError> {
        if channel.is_empty() {
            return Err(PubSubError::Invalid("the channel name is empty".to_owned()));
        }
        if channel.len() > MAX_CHANNEL_LEN {
            return Err(PubSubError::Invalid(format!(
                "the channel name is {} bytes, more than the limit of {MAX_CHANNEL_LEN}",
                channel.len()
            )));
        }
        Ok(())
    }

    /// Subscribes to `channel`: registered at once (no message published after this call is
    /// missed once the upstream subscription is in place), resolving when it is. `owner`
    /// is the app version's, `session` the WebSocket to close should the subscription fall
    /// behind under [`Overflow::Close`].
    fn subscribe(
        &self,
        channel: &str,
        owner: &Arc<Owner>,
        session: Option<Arc<dyn SessionSocket>>,
    ) -> impl Future<Output = Result<Subscription, PubSubError>> + Send + 'static {
        let registered =
            Broker::check_channel(channel).and_then(|()| self.register(channel, owner, session));
        async move {
            let subscription = registered?;
            let mut upstream = subscription.channel.upstream.subscribe();
            let state = upstream
                .wait_for(|state| *state != Upstream::Pending)
                .await
                .map(|state| state.clone())
                .unwrap_or_else(|_| Upstream::Failed("the broker stopped".to_owned()));
            match state {
                Upstream::Failed(reason) => {
                    // Forgotten now, so that the next subscriber tries again.
                    subscription.shared.forget(&subscription.channel);
                    Err(PubSubError::Failed(reason))
                }
                Upstream::Pending | Upstream::Ready => Ok(subscription),
            }
        }
    }

    /// Adds a subscriber to `channel`, making the channel (and asking for its upstream
    /// subscription) if it is the first.
    fn register(
        &self,
        channel: &str,
        owner: &Arc<Owner>,
        session: Option<Arc<dyn SessionSocket>>,
    ) -> Result<Subscription, PubSubError> {
        let shared = &self.0;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue::new(shared.config.queue));
        owner.adopt(id, &queue)?;
        let mut channels = lock(&shared.channels);
        let channel = match channels.get(channel) {
            Some(existing) => Arc::clone(existing),
            None => {
                let name: Arc<str> = Arc::from(channel);
                let initial = match shared.upstream {
                    None => Upstream::Ready,
                    Some(_) => Upstream::Pending,
                };
                let made = Arc::new(Channel {
                    name: Arc::clone(&name),
                    subscribers: Mutex::new(HashMap::new()),
                    upstream: tokio::sync::watch::Sender::new(initial),
                    published: AtomicU64::new(0),
                    delivered: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                });
                if let Some(upstream) = &shared.upstream {
                    upstream.subscribe(Arc::clone(&made));
                }
                channels.insert(name, Arc::clone(&made));
                made
            }
        };
        lock(&channel.subscribers).insert(
            id,
            Subscriber {
                queue: Arc::clone(&queue),
                session,
            },
        );
        drop(channels);
        Ok(Subscription {
            shared: Arc::clone(shared),
            channel,
            owner: Arc::clone(owner),
            id,
            queue,
        })
    }

    /// Publishes `payload` on `channel`, resolving to how many subscribers it reached (see
    /// the module docs). The Redis backend's future needs the host's runtime.
    fn publish(
        &self,
        channel: &str,
        payload: Bytes,
    ) -> impl Future<Output = Result<u64, PubSubError>> + Send + 'static {
        let checked = Broker::check_channel(channel).and_then(|()| {
            let limit = self.0.config.max_message;
            if payload.len() > limit {
                Err(PubSubError::Invalid(format!(
                    "the message is {} bytes, more than the limit of {limit} \
                     (pubsub_max_message)",
                    payload.len()
                )))
            } else {
                Ok(())
            }
        });
        let shared = Arc::clone(&self.0);
        let channel = channel.to_owned();
        async move {
            checked?;
            match &shared.upstream {
                None => {
                    if let Some(relay) = shared.relay.get() {
                        (relay.0)(&channel, &payload);
                    }
                    Ok(shared.deliver(&channel, payload))
                }
                Some(upstream) => upstream.publish(&channel, payload).await,
            }
        }
    }

    /// With worker processes and the memory backend: hands every message published here to
    /// `relay` too. Only the first call has an effect; a Redis broker shares its channels
    /// through Redis and ignores it.
    pub fn relay_to(&self, relay: Relay) {
        if self.0.upstream.is_none() {
            let _ = self.0.relay.set(relay);
        }
    }

    /// A message published in another worker, relayed by the supervisor: handed to this
    /// worker's subscribers of `channel`, as a local publish would be.
    pub fn deliver_relayed(&self, channel: &str, payload: Bytes) -> u64 {
        self.0.deliver(channel, payload)
    }

    /// Ends every subscription that no WebSocket session made (event streams, tasks) with
    /// `reason`, once what is queued for it is read: what a server that stops calls first, so
    /// that an endless stream fed by a subscription does not hold its connection open through
    /// the whole drain. Sessions' subscriptions are left to the WebSocket's own shutdown (the
    /// socket's close code is its to send) and to their version's retirement.
    pub fn end_streams(&self, reason: &str) {
        let channels: Vec<Arc<Channel>> = lock(&self.0.channels).values().cloned().collect();
        for channel in channels {
            for subscriber in lock(&channel.subscribers).values() {
                if subscriber.session.is_none() {
                    subscriber.queue.end(reason);
                }
            }
        }
    }

    /// The admin API's view: `{"backend", "connected", "channels": [{"name", "subscribers",
    /// "published", "delivered", "dropped"}], "reconnects"}`, channels by name.
    pub fn status(&self) -> Value {
        let shared = &self.0;
        let mut channels: Vec<Arc<Channel>> = lock(&shared.channels).values().cloned().collect();
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        let channels: Vec<Value> = channels
            .iter()
            .map(|channel| {
                json!({
                    "name": &*channel.name,
                    "subscribers": lock(&channel.subscribers).len(),
                    "published": channel.published.load(Ordering::Relaxed),
                    "delivered": channel.delivered.load(Ordering::Relaxed),
                    "dropped": channel.dropped.load(Ordering::Relaxed),
                })
            })
            .collect();
        let (connected, reconnects) = match &shared.upstream {
            None => (true, 0),
            Some(upstream) => (upstream.is_connected(), upstream.reconnects()),
        };
        json!({
            "backend": shared.config.backend.kind(),
            "connected": connected,
            "channels": channels,
            "reconnects": reconnects,
        })
    }
}

impl Shared {
    /// Hands `payload` to every local subscriber of `channel` without waiting for any, and
    /// returns how many it reached. A subscriber that overflows under [`Overflow::Close`] is
    /// ended, removed and its WebSocket closed with 1008.
    fn deliver(&self, channel: &str, payload: Bytes) -> u64 {
        let Some(channel) = lock(&self.channels).get(channel).cloned() else {
            return 0;
        };
        channel.published.fetch_add(1, Ordering::Relaxed);
        let overflow = self.config.overflow;
        let reason = format!(
            "this subscriber fell behind: its queue of {} messages was full \
             (pubsub_overflow = \"close\")",
            self.config.queue
        );
        let mut reached = 0;
        let mut dropped = 0;
        let mut overflowed = Vec::new();
        {
            let subscribers = lock(&channel.subscribers);
            for (id, subscriber) in subscribers.iter() {
                match subscriber.queue.push(payload.clone(), overflow) {
                    Pushed::Queued => reached += 1,
                    Pushed::DroppedOldest => {
                        reached += 1;
                        dropped += 1;
                    }
                    Pushed::Overflowed(lost) => {
                        reached += 1;
                        dropped += lost;
                        let queue = Arc::clone(&subscriber.queue);
                        overflowed.push((*id, queue, subscriber.session.clone()));
                    }
                    Pushed::Ended => {}
                }
            }
        }
        if dropped > 0 {
            channel.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        for (id, queue, session) in overflowed {
            tracing::warn!(
                channel = &*channel.name,
                queue = self.config.queue,
                websocket = session.is_some(),
                "pub/sub: a subscriber fell behind and was closed (pubsub_overflow = \"close\")"
            );
            // The socket first, then the end the app sees: so the client gets 1008 whatever
            // the app does once its subscription ends.
            if let Some(session) = session {
                session.close(FELL_BEHIND_CODE, FELL_BEHIND_REASON);
            }
            queue.end(&reason);
            self.remove(&channel, id);
        }
        reached
    }

    /// Removes subscriber `id` from `channel`; when it was the last, forgets the channel and
    /// drops its upstream subscription.
    fn remove(&self, channel: &Arc<Channel>, id: u64) {
        let mut channels = lock(&self.channels);
        let empty = {
            let mut subscribers = lock(&channel.subscribers);
            subscribers.remove(&id);
            subscribers.is_empty()
        };
        if empty {
            Shared::unmap(&mut channels, channel, self.upstream.as_ref());
        }
    }

    /// Forgets `channel` (its upstream subscription failed) even though it has subscribers,
    /// so that the next subscriber makes a new one and tries again.
    fn forget(&self, channel: &Arc<Channel>) {
        let mut channels = lock(&self.channels);
        Shared::unmap(&mut channels, channel, self.upstream.as_ref());
    }

    fn unmap(
        channels: &mut HashMap<Arc<str>, Arc<Channel>>,
        channel: &Arc<Channel>,
        upstream: Option<&redis::RedisUpstream>,
    ) {
        if channels
            .get(&channel.name)
            .is_some_and(|current| Arc::ptr_eq(current, channel))
        {
            channels.remove(&channel.name);
            if let Some(upstream) = upstream {
                upstream.unsubscribe(Arc::clone(&channel.name));
            }
        }
    }
}

/// One subscription, owned by whoever subscribed (through `plugin`'s subscription table):
/// dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    shared: Arc<Shared>,
    channel: Arc<Channel>,
    owner: Arc<Owner>,
    id: u64,
    queue: Arc<Queue>,
}

impl Subscription {
    /// The next message, or the end; otherwise registers `cx`'s waker.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let next = self.queue.poll_next(cx);
        if let Poll::Ready(Next::Message { .. }) = &next {
            self.channel.delivered.fetch_add(1, Ordering::Relaxed);
        }
        next
    }

    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.channel.name
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.owner.release(self.id);
        self.shared.remove(&self.channel, self.id);
    }
}

/// The subscriptions of one app version, ended when it is retired.
#[derive(Debug, Default)]
struct Owner {
    state: Mutex<OwnerState>,
}

#[derive(Debug, Default)]
struct OwnerState {
    open: HashMap<u64, std::sync::Weak<Queue>>,
    retired: bool,
}

/// The reason a retired version's subscriptions end with.
const RETIRED: &str = "the app version was retired";

impl Owner {
    fn adopt(&self, id: u64, queue: &Arc<Queue>) -> Result<(), PubSubError> {
        let mut state = lock(&self.state);
        if state.retired {
            return Err(PubSubError::Failed(RETIRED.to_owned()));
        }
        state.open.insert(id, Arc::downgrade(queue));
        Ok(())
    }

    fn release(&self, id: u64) {
        lock(&self.state).open.remove(&id);
    }

    fn retire(&self) {
        let open = {
            let mut state = lock(&self.state);
            state.retired = true;
            std::mem::take(&mut state.open)
        };
        for queue in open.values().filter_map(std::sync::Weak::upgrade) {
            queue.end(RETIRED);
        }
    }
}

/// One app version's way to the broker: what `AppServices` holds.
#[derive(Debug, Clone)]
pub struct AppPubSub {
    broker: Broker,
    owner: Arc<Owner>,
}

impl AppPubSub {
    /// A version's handle on `broker`.
    pub fn new(broker: &Broker) -> Self {
        AppPubSub {
            broker: broker.clone(),
            owner: Arc::default(),
        }
    }

    /// The broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Subscribes to `channel` (see [`Broker`]); `session` is the WebSocket of the session
    /// subscribing, if any, closed with 1008 should it fall behind under [`Overflow::Close`].
    /// Needs no runtime.
    pub fn subscribe(
        &self,
        channel: &str,
        session: Option<Arc<dyn SessionSocket>>,
    ) -> impl Future<Output = Result<Subscription, PubSubError>> + Send + 'static {
        self.broker.subscribe(channel, &self.owner, session)
    }

    /// Publishes `payload` on `channel`, in the caller's task when it runs on the host's
    /// runtime, else as a task there (the Redis client needs the runtime); dropping the future
    /// abandons it either way.
    pub fn publish(
        &self,
        channel: &str,
        payload: Bytes,
        runtime: &tokio::runtime::Handle,
    ) -> impl Future<Output = Result<u64, PubSubError>> + Send + 'static {
        let publishing = self.broker.publish(channel, payload);
        if super::in_task() {
            futures_util::future::Either::Left(publishing)
        } else {
            let task = super::AbortOnDrop(runtime.spawn(publishing));
            futures_util::future::Either::Right(async move {
                task.await.unwrap_or_else(|join_error| {
                    Err(PubSubError::Failed(format!(
                        "publish task failed: {join_error}"
                    )))
                })
            })
        }
    }

    /// Ends every subscription of the version (they read what is queued, then the end) and
    /// refuses new ones.
    pub fn retire(&self) {
        self.owner.retire();
    }
}

#[cfg(test)]
mod tests;
