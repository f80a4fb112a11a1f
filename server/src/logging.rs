//! Berth's log output: `tracing` events formatted as text on a thread of their own.
//!
//! Two things here matter under load, when the access log writes a line per request: the
//! timestamp, which `tracing-subscriber`'s default timer formats field by field for every line,
//! and the writes, one system call per line unless they are buffered.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Logs `tracing` events to stderr, filtered by `RUST_LOG` (default `info`), until the
/// returned guard is dropped, which writes what is still queued.
///
/// Lines are written by a thread of their own, so that a request never waits for stderr (a pipe
/// whose reader is slow, a file on a busy disk). Nothing is dropped: past 16k queued lines,
/// logging waits (the default of 128k preallocates 4 MB of queue). The thread takes every line
/// queued, then flushes: the buffer makes that one `write` per batch instead of one per line
/// (with the access log at 64 connections, 1.01 write calls per request instead of 2: the
/// response's and the line's).
///
/// # Panics
///
/// If a global `tracing` subscriber is already set: this is the binary's one logging setup.
pub fn init() -> WorkerGuard {
    let (stderr, flush_on_drop) = NonBlockingBuilder::default()
        .buffered_lines_limit(16 * 1024)
        .lossy(false)
        .thread_name("berth-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_timer(Timestamp)
        .init();
    flush_on_drop
}

/// UTC timestamps with microseconds, `2026-11-26T05:37:50.375701Z`, as `tracing-subscriber`'s
/// default timer writes them. The date and time of day are formatted once a second per thread
/// and reused; only the microseconds are written for each line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timestamp;

impl FormatTime for Timestamp {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write_timestamp(SystemTime::now(), w)?;
        if let Some(tag) = PROCESS.get() {
            w.write_str(" ")?;
            w.write_str(tag)?;
        }
        Ok(())
    }
}

/// Which process writes, after each line's timestamp: `worker 1 (pid 4242)`. The supervisor and
/// its workers share one stderr.
static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process in every line logged from now on.
pub fn name_process(name: String) {
    let _ = PROCESS.set(name);
}

/// Writes `now` as [`Timestamp`] does.
fn write_timestamp(now: SystemTime, w: &mut impl fmt::Write) -> fmt::Result {
    /// This thread's last second (since the epoch) and its text, `2026-11-26T05:37:50`.
    struct Second {
        since_epoch: u64,
        text: String,
    }
    thread_local! {
        static LAST: RefCell<Second> = const {
            RefCell::new(Second { since_epoch: 0, text: String::new() })
        };
    }
    // A clock set before 1970 logs as 1970.
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (seconds, micros) = (since.as_secs(), since.subsec_micros());
    let mut fraction = *b".000000Z";
    let mut rest = micros;
    for digit in fraction[1..7].iter_mut().rev() {
        // `rest % 10` is a single digit.
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let fraction = std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?;
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.since_epoch != seconds || last.text.is_empty() {
            let second = UNIX_EPOCH + Duration::from_secs(seconds);
            last.text.clear();
            write!(last.text, "{}", humantime::format_rfc3339_seconds(second))?;
            // Without the `Z`, which comes after the fraction.
            last.text.pop();
            last.since_epoch = seconds;
        }
        w.write_str(&last.text)?;
        w.write_str(fraction)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(now: SystemTime) -> String {
        let mut text = String::new();
        write_timestamp(now, &mut text).expect("formats");
        text
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |seconds: u64, micros: u64| {
            UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros)
        };
        // The same second twice (the cached text), then the next one, then an earlier one.
        assert_eq!(
            format(at(1_764_135_470, 375_701)),
            "2025-11-26T05:37:50.375701Z"
        );
        assert_eq!(format(at(1_764_135_470, 42)), "2025-11-26T05:37:50.000042Z");
        assert_eq!(
            format(at(1_764_135_471, 999_999)),
            "2025-11-26T05:37:51.999999Z"
        );
        assert_eq!(format(at(0, 0)), "1970-01-01T00:00:00.000000Z");
        // Whatever the instant, the text matches humantime's own microsecond format.
        let now = SystemTime::now();
        let expected = humantime::format_rfc3339_micros(now).to_string();
        assert_eq!(format(now), expected);
    }
}
