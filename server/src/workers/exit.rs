//! Why a worker process ended, in words an operator can act on.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// Why the supervisor replaced a worker: the reasons `/workers` counts restarts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// It died of a signal it did not get from the supervisor (a crash, an abort, the OOM
    /// killer).
    Crash,
    /// It exited on its own, with any status.
    Exit,
    /// The supervisor killed it: stuck inside one call into an app.
    Hang,
    /// The supervisor killed it: its runtime stopped ticking outside any app call.
    Stall,
    /// The supervisor killed it: it never reported ready in time.
    Start,
    /// Replaced healthy: it reached `max_requests`.
    MaxRequests,
    /// Replaced healthy: it reached `max_lifetime`.
    MaxLifetime,
    /// Replaced healthy: its resident memory stayed above `worker_max_rss`.
    MaxRss,
    /// Replaced healthy: SIGHUP.
    Reload,
}

impl Reason {
    /// The name `/workers` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Crash => "crash",
            Reason::Exit => "exit",
            Reason::Hang => "hang",
            Reason::Stall => "stall",
            Reason::Start => "start",
            Reason::MaxRequests => "max_requests",
            Reason::MaxLifetime => "max_lifetime",
            Reason::MaxRss => "max_rss",
            Reason::Reload => "reload",
        }
    }
}

/// `status` as a phrase: "was killed by SIGSEGV (segmentation fault)", "exited with status
/// 3", and for a SIGKILL the supervisor did not send, a hint that it was likely the kernel's
/// out-of-memory killer.
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    let Some(signal) = status.signal() else {
        return format!("ended ({status})");
    };
    let (name, meaning) = match signal {
        libc::SIGSEGV => ("SIGSEGV", "segmentation fault"),
        libc::SIGABRT => (
            "SIGABRT",
            "abort: a Rust stack overflow or abort, or a C assert",
        ),
        libc::SIGBUS => ("SIGBUS", "bus error"),
        libc::SIGILL => ("SIGILL", "illegal instruction"),
        libc::SIGFPE => ("SIGFPE", "arithmetic exception"),
        libc::SIGKILL => (
            "SIGKILL",
            "likely the kernel's out-of-memory killer: see dmesg",
        ),
        libc::SIGTERM => ("SIGTERM", "terminated"),
        libc::SIGINT => ("SIGINT", "interrupted"),
        libc::SIGPIPE => ("SIGPIPE", "broken pipe"),
        libc::SIGTRAP => ("SIGTRAP", "trap"),
        _ => ("signal", "unexpected signal"),
    };
    let core = if status.core_dumped() {
        ", core dumped"
    } else {
        ""
    };
    if name == "signal" {
        format!("was killed by signal {signal} ({meaning}{core})")
    } else {
        format!("was killed by {name} ({meaning}{core})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_causes() {
        assert_eq!(
            describe(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGSEGV)),
            "was killed by SIGSEGV (segmentation fault)"
        );
        assert!(describe(ExitStatus::from_raw(libc::SIGKILL)).contains("out-of-memory"));
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGUSR2)),
            format!("was killed by signal {} (unexpected signal)", libc::SIGUSR2)
        );
    }
}
