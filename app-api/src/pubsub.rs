//! Pub/sub, a capability of the host: [`Host::subscribe`] to a channel for a [`Subscription`]
//! (a stream of its messages), [`Host::publish`] to send one.
//!
//! The host holds one subscription per channel and process and fans each message out to its
//! subscribers, each through a bounded queue of its own, so a subscriber that does not keep
//! up never slows the others: by the host's policy its oldest messages are dropped (counted
//! in [`Subscription::dropped`]), or its subscription ends and the WebSocket whose session
//! made it is closed with 1008. The backend is an in-process broker, or Redis when Berth is
//! configured with one (`pubsub = "redis://..."`), which several Berth instances then share.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

use crate::abi::SUB_INVALID;
use crate::ffi::pubsub::{HostPublish, HostSubscribe, RawSubscription, SubEvent};
use crate::host::{Host, Inner};

impl Host {
    /// Subscribes to `channel`. The subscription is in place when the future resolves:
    /// every message published after that reaches it. Unsubscribes when dropped.
    ///
    /// In a WebSocket session, subscribe with the session's own [`Host`] (the one its
    /// closure receives): a subscription that falls behind under the host's close policy then
    /// closes that socket with 1008, so the client knows it missed messages.
    ///
    /// Fails with [`PubSubErrorKind::Invalid`] for a channel the host does not accept (an
    /// empty or overlong name), [`PubSubErrorKind::Failed`] when the backend fails (Redis
    /// unreachable, say).
    pub fn subscribe(&self, channel: &str) -> Subscribe {
        let inner = match &self.inner {
            Inner::Real(handle) => SubscribeInner::Real(handle.subscribe(channel)),
            #[cfg(feature = "testing")]
            Inner::Mock(mock) => SubscribeInner::Ready(Some(mock.subscribe(channel))),
        };
        Subscribe {
            inner,
            channel: channel.to_owned(),
        }
    }

    /// Publishes `payload` on `channel` and resolves to the number of receivers the backend
    /// reached: subscriptions in this process for the in-process broker, subscribed Berth
    /// instances (connections) for Redis. Zero is not an error: no one was listening.
    pub fn publish(&self, channel: &str, payload: impl Into<Bytes>) -> Publish {
        let payload = payload.into();
        let inner = match &self.inner {
            Inner::Real(handle) => PublishInner::Real(handle.publish(channel, payload)),
            #[cfg(feature = "testing")]
            Inner::Mock(mock) => PublishInner::Ready(Some(mock.publish(channel, payload))),
        };
        Publish { inner }
    }
}

/// How a pub/sub call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PubSubErrorKind {
    /// The host does not accept the channel name (empty, too long or not UTF-8).
    Invalid,
    /// The backend failed (Redis unreachable, say), or the host has no pub/sub.
    Failed,
}

/// A subscribe or publish failed; [`kind`](PubSubError::kind) says how.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", match kind {
    PubSubErrorKind::Invalid => "invalid channel",
    PubSubErrorKind::Failed => "pub/sub failed",
})]
pub struct PubSubError {
    kind: PubSubErrorKind,
    message: String,
}

impl PubSubError {
    /// An error of `kind` with a message.
    pub fn new(kind: PubSubErrorKind, message: impl Into<String>) -> Self {
        PubSubError {
            kind,
            message: message.into(),
        }
    }

    /// A failure the host reported with a `SUB_*` tag.
    fn from_abi((tag, message): (u32, String)) -> Self {
        let kind = match tag {
            SUB_INVALID => PubSubErrorKind::Invalid,
            _ => PubSubErrorKind::Failed,
        };
        PubSubError::new(kind, message)
    }

    /// How it failed.
    pub fn kind(&self) -> PubSubErrorKind {
        self.kind
    }

    /// The host's description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The future of [`Host::subscribe`]. Dropping it abandons the subscribe.
#[must_use = "futures do nothing unless awaited"]
pub struct Subscribe {
    inner: SubscribeInner,
    channel: String,
}

enum SubscribeInner {
    Real(HostSubscribe),
    #[cfg(feature = "testing")]
    Ready(Option<Result<Subscription, PubSubError>>),
}

impl Future for Subscribe {
    type Output = Result<Subscription, PubSubError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.inner {
            SubscribeInner::Real(future) => Pin::new(future).poll(cx).map(|result| {
                result
                    .map(|raw| Subscription::new(SubInner::Real(raw), &this.channel))
                    .map_err(PubSubError::from_abi)
            }),
            #[cfg(feature = "testing")]
            SubscribeInner::Ready(result) => Poll::Ready(result.take().unwrap_or_else(|| {
                Err(PubSubError::new(
                    PubSubErrorKind::Failed,
                    "subscribe polled after completion",
                ))
            })),
        }
    }
}

impl fmt::Debug for Subscribe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscribe")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// The future of [`Host::publish`].
#[must_use = "futures do nothing unless awaited"]
pub struct Publish {
    inner: PublishInner,
}

enum PublishInner {
    Real(HostPublish),
    #[cfg(feature = "testing")]
    Ready(Option<Result<usize, PubSubError>>),
}

impl Future for Publish {
    type Output = Result<usize, PubSubError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            PublishInner::Real(future) => Pin::new(future).poll(cx).map(|result| {
                result
                    .map(|receivers| usize::try_from(receivers).unwrap_or(usize::MAX))
                    .map_err(PubSubError::from_abi)
            }),
            #[cfg(feature = "testing")]
            PublishInner::Ready(result) => Poll::Ready(result.take().unwrap_or_else(|| {
                Err(PubSubError::new(
                    PubSubErrorKind::Failed,
                    "publish polled after completion",
                ))
            })),
        }
    }
}

impl fmt::Debug for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Publish")
    }
}

/// A subscription to one channel, from [`Host::subscribe`]: [`next`](Subscription::next)
/// message by message, or as a [`Stream`](futures_core::Stream). Dropping it unsubscribes.
pub struct Subscription {
    inner: SubInner,
    channel: String,
    dropped: u64,
    end_reason: Option<String>,
}

enum SubInner {
    Real(RawSubscription),
    #[cfg(feature = "testing")]
    Mock(Box<dyn MockFeed>),
}

impl Subscription {
    fn new(inner: SubInner, channel: &str) -> Self {
        Subscription {
            inner,
            channel: channel.to_owned(),
            dropped: 0,
            end_reason: None,
        }
    }

    /// A subscription fed by a mock host.
    #[cfg(feature = "testing")]
    pub(crate) fn from_mock(feed: Box<dyn MockFeed>, channel: &str) -> Self {
        Subscription::new(SubInner::Mock(feed), channel)
    }

    /// The next message, or `None` once the host has ended the subscription
    /// ([`end_reason`](Subscription::end_reason) says why: the app version was retired, the
    /// server is stopping, or the subscriber fell behind under the close policy). Cancel-safe:
    /// dropping the future loses no message.
    pub async fn next(&mut self) -> Option<Bytes> {
        poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.end_reason.is_some() {
            return Poll::Ready(None);
        }
        let (dropped, event) = std::task::ready!(match &mut self.inner {
            SubInner::Real(raw) => raw.poll_next(cx),
            #[cfg(feature = "testing")]
            SubInner::Mock(feed) => feed.poll_next(cx),
        });
        self.dropped = self.dropped.saturating_add(dropped);
        Poll::Ready(match event {
            SubEvent::Message(payload) => Some(payload),
            SubEvent::End(reason) => {
                self.end_reason = Some(reason);
                None
            }
        })
    }

    /// How many messages the host dropped from this subscription's queue so far because it
    /// did not keep up (under the drop-oldest policy).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Why the host ended the subscription, once [`next`](Subscription::next) has returned
    /// `None`.
    pub fn end_reason(&self) -> Option<&str> {
        self.end_reason.as_deref()
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl futures_core::Stream for Subscription {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.get_mut().poll_message(cx)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("dropped", &self.dropped)
            .field("end_reason", &self.end_reason)
            .finish_non_exhaustive()
    }
}

/// A mock host's queue for one subscriber ([`crate::testing`] implements it).
#[cfg(feature = "testing")]
pub(crate) trait MockFeed: Send + Sync + fmt::Debug {
    /// The next event, with the count of messages dropped before it.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<(u64, SubEvent)>;
}
