//! The call table: which app call each thread is inside, and since when, written where a
//! watchdog can read it, even from another process and even after this one died.
//!
//! A poll of an app's future can block its thread (a `std::thread::sleep`, a busy loop, a
//! deadlock in a C library) and no timeout in the host can preempt it. So before every call
//! into app code the calling thread records the app, the request and the time in its own slot
//! ([`enter`]), and clears the mark when the call returns. The table holds only atomics, so it
//! can live in memory shared with the supervisor (mapped by `plugin::shared`): the supervisor
//! reads it to kill a worker stuck in one call, and, when a worker dies, to say which app and
//! request it died in. In a single process it lives on the heap, and `/healthz` reads it.
//!
//! The runtime's heartbeat ([`CallTable::beat`]) is in the same table: a task that stamps it
//! every [`HEARTBEAT`] shows that the runtime still polls its tasks.
//!
//! A slot belongs to one thread, which is its only writer. Its sequence number is odd while the
//! thread is inside a call; the text is written only while it is even, so a reader that sees the
//! same odd number before and after reading the text has read it whole (a seqlock).

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How many threads can record calls; threads past it run untracked (a runtime has one per
/// core, and only runtime threads call into apps).
pub const SLOTS: usize = 64;
/// Bytes of text per slot: the app's name, then the request line, cut to fit.
const TEXT_BYTES: usize = 200;
const TEXT_WORDS: usize = TEXT_BYTES / 8;
/// How often the runtime's heartbeat is stamped.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// Written first, so that a reader can tell a table from zeroed memory.
const MAGIC: u64 = 0x4245_5254_4843_414c; // "BERTHCAL"

/// One thread's record of the app call it is inside. Aligned to a cache line: each thread writes
/// its own slot at every poll, and two threads writing one line would slow each other.
#[repr(C, align(64))]
#[derive(Debug)]
struct Slot {
    /// Odd while inside a call.
    seq: AtomicU64,
    /// When the call began, on the monotonic clock ([`now_ns`]).
    started_ns: AtomicU64,
    /// The call's time limit in nanoseconds; 0: the server's default request timeout.
    limit_ns: AtomicU64,
    app_len: AtomicU32,
    text_len: AtomicU32,
    /// The app's name and then the request line, packed little-endian.
    text: [AtomicU64; TEXT_WORDS],
}

impl Slot {
    const fn new() -> Self {
        Slot {
            seq: AtomicU64::new(0),
            started_ns: AtomicU64::new(0),
            limit_ns: AtomicU64::new(0),
            app_len: AtomicU32::new(0),
            text_len: AtomicU32::new(0),
            text: [const { AtomicU64::new(0) }; TEXT_WORDS],
        }
    }

    /// Writes the text and opens the call. Only the slot's own thread calls this.
    fn open(&self, app: &str, request: &[&[u8]], limit: Option<Duration>) {
        let mut buf = [0u8; TEXT_BYTES];
        let mut len = 0;
        let mut put = |len: &mut usize, bytes: &[u8]| {
            let n = bytes.len().min(TEXT_BYTES - *len);
            buf[*len..*len + n].copy_from_slice(&bytes[..n]);
            *len += n;
        };
        put(&mut len, app.as_bytes());
        let app_len = len;
        for (i, part) in request.iter().enumerate() {
            if i > 0 {
                put(&mut len, b" ");
            }
            put(&mut len, part);
        }
        for (word, chunk) in self.text.iter().zip(buf[..len.div_ceil(8) * 8].chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
        self.app_len.store(app_len as u32, Ordering::Relaxed);
        self.text_len.store(len as u32, Ordering::Relaxed);
        let limit = limit.map_or(0, |limit| limit.as_nanos().min(u128::from(u64::MAX)) as u64);
        self.limit_ns.store(limit, Ordering::Relaxed);
        self.started_ns.store(now_ns(), Ordering::Relaxed);
        self.seq.fetch_add(1, Ordering::Release);
    }

    fn close(&self) {
        self.seq.fetch_add(1, Ordering::Release);
    }

    /// The call this slot's thread is inside, read whole, if it is inside one.
    fn read(&self, thread: usize) -> Option<Call> {
        for _ in 0..8 {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 0 {
                return None;
            }
            let app_len = self.app_len.load(Ordering::Relaxed) as usize;
            let len = (self.text_len.load(Ordering::Relaxed) as usize).min(TEXT_BYTES);
            let mut buf = [0u8; TEXT_BYTES];
            for (word, chunk) in self.text.iter().zip(buf.chunks_mut(8)) {
                chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
            }
            let started_ns = self.started_ns.load(Ordering::Relaxed);
            let limit_ns = self.limit_ns.load(Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) != before {
                continue;
            }
            let app_len = app_len.min(len);
            return Some(Call {
                thread,
                app: String::from_utf8_lossy(&buf[..app_len]).into_owned(),
                request: String::from_utf8_lossy(&buf[app_len..len]).into_owned(),
                started_ns,
                limit: (limit_ns > 0).then(|| Duration::from_nanos(limit_ns)),
            });
        }
        None
    }
}

/// The table of one process: its heartbeat, its request counts and a slot per thread.
///
/// `#[repr(C)]` and atomics only: a supervisor maps the same bytes, and all-zero bytes are a
/// valid (empty) table.
#[repr(C)]
#[derive(Debug)]
pub struct CallTable {
    magic: AtomicU64,
    heartbeat_ns: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicU64,
    slots: [Slot; SLOTS],
}

/// A call some thread is inside, as read from its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The slot's number: one per thread.
    pub thread: usize,
    /// The app's name.
    pub app: String,
    /// What it is doing: `GET /hello/x`, `task`, `init`, `WebSocket GET /chat/ws`...
    pub request: String,
    /// When the call began ([`now_ns`]).
    pub started_ns: u64,
    /// The call's time limit, if not the server's default request timeout.
    pub limit: Option<Duration>,
}

impl Call {
    /// How long the call has been running at `now_ns`.
    pub fn elapsed(&self, now_ns: u64) -> Duration {
        Duration::from_nanos(now_ns.saturating_sub(self.started_ns))
    }
}

impl Default for CallTable {
    fn default() -> Self {
        CallTable {
            magic: AtomicU64::new(MAGIC),
            heartbeat_ns: AtomicU64::new(now_ns()),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            slots: [const { Slot::new() }; SLOTS],
        }
    }
}

impl CallTable {
    /// Marks shared memory (zeroed by the kernel) as a table in use, and stamps its heartbeat.
    pub fn init(&self) {
        self.heartbeat_ns.store(now_ns(), Ordering::Relaxed);
        self.magic.store(MAGIC, Ordering::Release);
    }

    /// Stamps the heartbeat: the runtime is polling its tasks.
    pub fn beat(&self) {
        self.heartbeat_ns.store(now_ns(), Ordering::Relaxed);
    }

    /// How long ago the heartbeat was stamped, or `None` if the table was never initialised.
    pub fn heartbeat_age(&self, now_ns: u64) -> Option<Duration> {
        if self.magic.load(Ordering::Acquire) != MAGIC {
            return None;
        }
        let stamped = self.heartbeat_ns.load(Ordering::Relaxed);
        Some(Duration::from_nanos(now_ns.saturating_sub(stamped)))
    }

    /// The calls threads are inside now.
    pub fn calls(&self) -> Vec<Call> {
        (self.slots.iter().enumerate())
            .filter_map(|(i, slot)| slot.read(i))
            .collect()
    }

    /// Requests begun since the table was made, and requests not finished yet.
    pub fn requests(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
        )
    }
}

/// The process's table, once installed.
static TABLE: OnceLock<&'static CallTable> = OnceLock::new();
/// Slots handed out to threads so far.
static THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot (`usize::MAX` until it first enters a call, `usize::MAX - 1` if the
    /// table was full) and how deeply it is nested in calls.
    static THREAD: Cell<(usize, u32)> = const { Cell::new((usize::MAX, 0)) };
}

/// Makes `table` the one calls are recorded in, for the rest of the process. Only the first
/// call has an effect.
pub fn install(table: &'static CallTable) {
    let _ = TABLE.set(table);
}

/// The installed table.
pub fn table() -> Option<&'static CallTable> {
    TABLE.get().copied()
}

/// Counts a request begun, until the returned guard drops.
pub fn request_begun() -> RequestCount {
    if let Some(table) = table() {
        table.requests.fetch_add(1, Ordering::Relaxed);
        table.in_flight.fetch_add(1, Ordering::Relaxed);
    }
    RequestCount(())
}

/// A request counted by [`request_begun`], in flight until dropped.
#[derive(Debug)]
pub struct RequestCount(());

impl Drop for RequestCount {
    fn drop(&mut self) {
        if let Some(table) = table() {
            table.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Records that this thread is inside a call into `app` for `request` (its parts are joined
/// with spaces), until the returned guard drops. `limit` is the call's time limit (`None`: the
/// server's default request timeout). A call inside a call keeps the outer one's record.
pub fn enter(app: &str, request: &[&[u8]], limit: Option<Duration>) -> InCall {
    let Some(table) = table() else {
        return InCall(None);
    };
    THREAD.with(|thread| {
        let (mut index, depth) = thread.get();
        if index == usize::MAX {
            index = THREADS.fetch_add(1, Ordering::Relaxed);
            if index >= SLOTS {
                index = usize::MAX - 1;
            }
        }
        thread.set((index, depth + 1));
        let slot = table.slots.get(index);
        if let (0, Some(slot)) = (depth, slot) {
            slot.open(app, request, limit);
        }
        InCall(slot)
    })
}

/// `future`, with every poll recorded as a call into `app` doing `what`.
pub async fn watched<F: std::future::Future>(
    app: &str,
    what: &str,
    limit: Option<Duration>,
    future: F,
) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        let _in_app = enter(app, &[what.as_bytes()], limit);
        future.as_mut().poll(cx)
    })
    .await
}

/// A call recorded by [`enter`]; dropping it records that the call returned.
#[derive(Debug)]
pub struct InCall(Option<&'static Slot>);

impl Drop for InCall {
    fn drop(&mut self) {
        let Some(slot) = self.0 else { return };
        THREAD.with(|thread| {
            let (index, depth) = thread.get();
            let depth = depth.saturating_sub(1);
            thread.set((index, depth));
            if depth == 0 {
                slot.close();
            }
        });
    }
}

/// Nanoseconds on the system's monotonic clock, which every process reads alike.
pub fn now_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// Stamps `table`'s heartbeat every [`HEARTBEAT`] on the current runtime, for as long as it
/// runs.
pub fn spawn_heartbeat(table: &'static CallTable) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            table.beat();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_reads_back_whole_and_only_while_inside_a_call() {
        let slot = Slot::new();
        assert_eq!(slot.read(3), None);
        slot.open(
            "hello",
            &[b"GET", b"/hello/x?y=1"],
            Some(Duration::from_secs(5)),
        );
        let call = slot.read(3).expect("inside a call");
        assert_eq!(call.app, "hello");
        assert_eq!(call.request, "GET /hello/x?y=1");
        assert_eq!(call.limit, Some(Duration::from_secs(5)));
        assert_eq!(call.thread, 3);
        slot.close();
        assert_eq!(slot.read(3), None);
    }

    #[test]
    fn long_text_is_cut_to_the_slot() {
        let slot = Slot::new();
        let path = vec![b'a'; 1000];
        slot.open("app", &[b"GET", &path], None);
        let call = slot.read(0).expect("inside a call");
        assert_eq!(call.app.len() + call.request.len(), TEXT_BYTES);
        assert_eq!(call.limit, None);
    }
}
