//! The Redis backend: one SUBSCRIBE connection for the whole process, owned by a supervisor
//! task that reconnects and resubscribes on its own, and one multiplexed connection for
//! PUBLISH.
//!
//! The broker asks for upstream (un)subscriptions through an unbounded command queue, always
//! while holding its channel map, so the supervisor sees them in the order the map changed.
//! The supervisor keeps the set of channels that should be subscribed; on every (re)connect it
//! subscribes to all of them at once. Messages are handed to the broker's fan-out as they
//! arrive, so the `redis` crate's own (unbounded) buffer stays empty.
//!
//! The gap is logged: a warning when the connection is lost (or cannot be made), an info line
//! with how long it was down when it is back. A connection that stops answering is noticed by
//! a PING every [`PING_EVERY`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Channel, PubSubError, Shared, Upstream, lock, redacted};

/// Time limit for connecting, and for the first attempt the server waits for at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time limit for a reply to SUBSCRIBE, UNSUBSCRIBE, PING or PUBLISH.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the subscribed connection is checked with a PING.
const PING_EVERY: Duration = Duration::from_secs(10);
/// The first wait before reconnecting; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the broker asks of the supervisor.
#[derive(Debug)]
enum Command {
    /// Subscribe upstream and report through the channel's `upstream` state.
    Subscribe(Arc<Channel>),
    /// Unsubscribe upstream.
    Unsubscribe(Arc<str>),
}

/// What the supervisor and the publishers share.
#[derive(Debug)]
struct Link {
    /// The URL without its password, for logs and errors.
    shown: String,
    connected: AtomicBool,
    /// Whether it ever connected: until then, subscribing fails.
    ever_connected: AtomicBool,
    /// Successful reconnections after a loss.
    reconnects: AtomicU64,
    /// Bumped on every connect, so that publishers drop a connection made before a loss.
    generation: AtomicU64,
    /// Why the last attempt failed, or the connection was lost.
    last_error: Mutex<String>,
    /// Set once the first connection attempt is over.
    first_attempt: tokio::sync::watch::Sender<bool>,
}

impl Link {
    fn unavailable(&self) -> PubSubError {
        let error = lock(&self.last_error).clone();
        PubSubError::Failed(format!(
            "the pub/sub Redis at {} is not connected: {error}",
            self.shown
        ))
    }
}

/// The Redis side of a [`Broker`](super::Broker).
#[derive(Debug)]
pub(super) struct RedisUpstream {
    commands: mpsc::UnboundedSender<Command>,
    link: Arc<Link>,
    client: Option<::redis::Client>,
    /// The PUBLISH connection and the generation it was made in.
    publisher: tokio::sync::Mutex<Option<(u64, ::redis::aio::MultiplexedConnection)>>,
}

impl RedisUpstream {
    /// Starts the supervisor for `url` (already checked by the config) on the current runtime;
    /// it delivers to `shared` and stops when `shared` is gone.
    pub(super) fn start(url: &str, shared: Weak<Shared>) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            shown: redacted(url),
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            last_error: Mutex::new("not connected yet".to_owned()),
            first_attempt: tokio::sync::watch::Sender::new(false),
        });
        let client = match ::redis::Client::open(url) {
            Ok(client) => Some(client),
            Err(err) => {
                *lock(&link.last_error) = format!("invalid URL: {err}");
                link.first_attempt.send_replace(true);
                tracing::error!(url = link.shown, "pub/sub: invalid Redis URL: {err}");
                None
            }
        };
        let supervisor = Supervisor {
            client: client.clone(),
            link: Arc::clone(&link),
            shared,
            commands: receiver,
            wanted: BTreeMap::new(),
        };
        tokio::spawn(supervisor.run());
        RedisUpstream {
            commands,
            link,
            client,
            publisher: tokio::sync::Mutex::new(None),
        }
    }

    /// Waits until the first connection attempt is over (or [`CONNECT_TIMEOUT`] and a bit).
    pub(super) async fn first_attempt(&self) {
        let mut attempted = self.link.first_attempt.subscribe();
        let waited = tokio::time::timeout(
            CONNECT_TIMEOUT + Duration::from_secs(1),
            attempted.wait_for(|done| *done),
        );
        let _ = waited.await;
    }

    pub(super) fn is_connected(&self) -> bool {
        self.link.connected.load(Ordering::SeqCst)
    }

    pub(super) fn reconnects(&self) -> u64 {
        self.link.reconnects.load(Ordering::SeqCst)
    }

    /// Asks for `channel`'s upstream subscription; its `upstream` state reports the outcome.
    pub(super) fn subscribe(&self, channel: Arc<Channel>) {
        if let Err(mpsc::error::SendError(Command::Subscribe(channel))) =
            self.commands.send(Command::Subscribe(channel))
        {
            channel
                .upstream
                .send_replace(Upstream::Failed("the pub/sub broker stopped".to_owned()));
        }
    }

    pub(super) fn unsubscribe(&self, name: Arc<str>) {
        let _ = self.commands.send(Command::Unsubscribe(name));
    }

    /// PUBLISH, resolving to Redis's reply: how many connections (Berth instances) were
    /// subscribed. Fails at once while the subscribed connection is down.
    pub(super) async fn publish(&self, channel: &str, payload: Bytes) -> Result<u64, PubSubError> {
        if !self.is_connected() {
            return Err(self.link.unavailable());
        }
        let mut connection = self.publisher().await?;
        let mut command = ::redis::cmd("PUBLISH");
        command.arg(channel).arg(&payload[..]);
        let failed = |error: String| {
            PubSubError::Failed(format!(
                "PUBLISH to the pub/sub Redis at {} failed: {error}",
                self.link.shown
            ))
        };
        match tokio::time::timeout(REPLY_TIMEOUT, command.query_async::<u64>(&mut connection)).await
        {
            Ok(Ok(receivers)) => Ok(receivers),
            Ok(Err(err)) => {
                *self.publisher.lock().await = None;
                Err(failed(err.to_string()))
            }
            Err(_) => {
                *self.publisher.lock().await = None;
                Err(failed(format!("no reply within {REPLY_TIMEOUT:?}")))
            }
        }
    }

    /// The PUBLISH connection, made anew if there is none or it predates the last reconnect.
    async fn publisher(&self) -> Result<::redis::aio::MultiplexedConnection, PubSubError> {
        let Some(client) = &self.client else {
            return Err(self.link.unavailable());
        };
        let generation = self.link.generation.load(Ordering::SeqCst);
        let mut slot = self.publisher.lock().await;
        if let Some((made_in, connection)) = &*slot
            && *made_in == generation
        {
            return Ok(connection.clone());
        }
        let config = ::redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(REPLY_TIMEOUT));
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|err| {
                PubSubError::Failed(format!(
                    "cannot connect to the pub/sub Redis at {} to publish: {err}",
                    self.link.shown
                ))
            })?;
        *slot = Some((generation, connection.clone()));
        Ok(connection)
    }
}

/// The task that owns the SUBSCRIBE connection.
struct Supervisor {
    client: Option<::redis::Client>,
    link: Arc<Link>,
    shared: Weak<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// The channels that should be subscribed, with the channel whose `upstream` state to set.
    wanted: BTreeMap<Arc<str>, Arc<Channel>>,
}

/// Why the supervisor's loop ended.
enum Stop {
    /// The broker is gone: stop for good.
    BrokerGone,
    /// The connection failed: reconnect.
    Lost(String),
}

impl Supervisor {
    async fn run(mut self) {
        let Some(client) = self.client.clone() else {
            // An invalid URL: every subscribe fails, with the error.
            while let Some(command) = self.commands.recv().await {
                self.offline(command);
            }
            return;
        };
        let mut backoff = BACKOFF_MIN;
        // When the connection went down (`None` before the first connection).
        let mut down_since: Option<Instant> = None;
        let mut logged_down = false;
        loop {
            let connecting = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub());
            tokio::pin!(connecting);
            let connected = loop {
                tokio::select! {
                    connected = &mut connecting => break connected,
                    command = self.commands.recv() => match command {
                        Some(command) => self.offline(command),
                        None => return,
                    },
                }
            };
            let error = match connected {
                Ok(Ok(pubsub)) => match self.serve(pubsub, &mut down_since, &mut backoff).await {
                    Stop::BrokerGone => return,
                    Stop::Lost(error) => {
                        logged_down = true;
                        error
                    }
                },
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("no connection within {CONNECT_TIMEOUT:?}"),
            };
            *lock(&self.link.last_error) = error.clone();
            self.link.first_attempt.send_replace(true);
            if !logged_down {
                logged_down = true;
                if self.link.ever_connected.load(Ordering::SeqCst) {
                    tracing::warn!(
                        url = self.link.shown,
                        "pub/sub: cannot reconnect to Redis: {error}"
                    );
                } else {
                    tracing::warn!(
                        url = self.link.shown,
                        "pub/sub: cannot connect to Redis: {error}; serving anyway, retrying \
                         in the background (subscribing and publishing fail until it is \
                         reachable)"
                    );
                }
            } else {
                tracing::debug!(
                    url = self.link.shown,
                    "pub/sub: Redis still unreachable: {error}"
                );
            }
            // Wait, answering commands meanwhile.
            let pause = tokio::time::sleep(backoff);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    command = self.commands.recv() => match command {
                        Some(command) => self.offline(command),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if down_since.is_none() && self.link.ever_connected.load(Ordering::SeqCst) {
                down_since = Some(Instant::now());
            }
        }
    }

    /// A command while there is no connection: registered if the broker ever connected (it
    /// will be subscribed on reconnect), refused otherwise.
    fn offline(&mut self, command: Command) {
        match command {
            Command::Subscribe(channel) => {
                if self.link.ever_connected.load(Ordering::SeqCst) {
                    channel.upstream.send_replace(Upstream::Ready);
                    self.wanted.insert(Arc::clone(&channel.name), channel);
                } else {
                    channel
                        .upstream
                        .send_replace(Upstream::Failed(self.unavailable_message()));
                }
            }
            Command::Unsubscribe(name) => {
                self.wanted.remove(&name);
            }
        }
    }

    fn unavailable_message(&self) -> String {
        self.link.unavailable().to_string()
    }

    /// Runs one connection: subscribes to every wanted channel, then delivers messages and
    /// answers commands until the connection fails or the broker is gone.
    async fn serve(
        &mut self,
        pubsub: ::redis::aio::PubSub,
        down_since: &mut Option<Instant>,
        backoff: &mut Duration,
    ) -> Stop {
        let (mut sink, mut stream) = pubsub.split();
        if !self.wanted.is_empty() {
            let names: Vec<&str> = self.wanted.keys().map(|name| &**name).collect();
            if let Err(error) = reply(sink.subscribe(names)).await {
                return Stop::Lost(format!("resubscribing: {error}"));
            }
        }
        for channel in self.wanted.values() {
            channel.upstream.send_replace(Upstream::Ready);
        }
        self.link.generation.fetch_add(1, Ordering::SeqCst);
        self.link.connected.store(true, Ordering::SeqCst);
        let first = !self.link.ever_connected.swap(true, Ordering::SeqCst);
        self.link.first_attempt.send_replace(true);
        *backoff = BACKOFF_MIN;
        if first {
            tracing::info!(url = self.link.shown, "pub/sub: connected to Redis");
        } else {
            self.link.reconnects.fetch_add(1, Ordering::SeqCst);
            let down = down_since.take().map(|since| since.elapsed());
            tracing::info!(
                url = self.link.shown,
                channels = self.wanted.len(),
                "pub/sub: reconnected to Redis after {:.1?} down; resubscribed every channel",
                down.unwrap_or_default()
            );
        }

        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        let stop = loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        break Stop::Lost("the connection was closed".to_owned());
                    };
                    let Some(shared) = self.shared.upgrade() else {
                        break Stop::BrokerGone;
                    };
                    let (channel, payload) = (message.get_channel_name(), message.get_payload_bytes());
                    let limit = shared.config.max_message;
                    if payload.len() > limit {
                        // Published by someone else (an app's publish is checked): not fanned
                        // out, so that queues hold at most `pubsub_max_message` per message.
                        tracing::warn!(
                            channel,
                            bytes = payload.len(),
                            "pub/sub: dropped a message from Redis larger than pubsub_max_message \
                             ({limit} bytes)"
                        );
                        continue;
                    }
                    shared.deliver(channel, Bytes::copy_from_slice(payload));
                }
                command = self.commands.recv() => match command {
                    None => break Stop::BrokerGone,
                    Some(Command::Subscribe(channel)) => {
                        let name = Arc::clone(&channel.name);
                        let subscribed = reply(sink.subscribe(&*name)).await;
                        // Registered either way: on failure it is subscribed on reconnect.
                        channel.upstream.send_replace(Upstream::Ready);
                        self.wanted.insert(name, channel);
                        if let Err(error) = subscribed {
                            break Stop::Lost(format!("subscribing: {error}"));
                        }
                    }
                    Some(Command::Unsubscribe(name)) => {
                        self.wanted.remove(&name);
                        if let Err(error) = reply(sink.unsubscribe(&*name)).await {
                            break Stop::Lost(format!("unsubscribing: {error}"));
                        }
                    }
                },
                _ = ping.tick() => {
                    if let Err(error) = reply(sink.ping::<::redis::Value>()).await {
                        break Stop::Lost(format!("PING: {error}"));
                    }
                }
            }
        };
        self.link.connected.store(false, Ordering::SeqCst);
        if let Stop::Lost(error) = &stop {
            *down_since = Some(Instant::now());
            *lock(&self.link.last_error) = error.clone();
            tracing::warn!(
                url = self.link.shown,
                channels = self.wanted.len(),
                "pub/sub: lost the Redis connection ({error}); reconnecting, subscriptions stay \
                 registered (messages published meanwhile are lost)"
            );
        }
        stop
    }
}

/// Awaits a reply within [`REPLY_TIMEOUT`].
async fn reply<T>(call: impl Future<Output = ::redis::RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(REPLY_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no reply within {REPLY_TIMEOUT:?}")),
    }
}
