//! The supervisor: binds the listeners, starts the workers and keeps them running. It loads no
//! app and runs no app code, so nothing an app does can take it down.
//!
//! One task owns the workers (`Supervisor::run`): it reacts to their messages and exits, and
//! every `TICK` it runs the watchdog and starts the replacements that are due. The admin API
//! reads the same state under a lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::control::{self, FromWorker, ToWorker};
use super::exit::{self, Reason};
use super::worker::ENV;
use crate::admin::{self, Admin, Answer};
use crate::config::Config;
use crate::host::calls::{self, Call};
use crate::http::listener;
use crate::plugin::shared::SharedCalls;
use crate::server::ServeError;

/// How often the watchdog looks at the workers.
const TICK: Duration = Duration::from_millis(100);
/// How long a worker may take to load its apps and say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Deaths in [`LOOP_WINDOW`] from which a slot counts as crash-looping.
const LOOP_DEATHS: usize = 5;
const LOOP_WINDOW: Duration = Duration::from_secs(60);
/// The longest wait before a crash-looping slot's next worker.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a worker's resident memory is sampled, and how many samples in a row over
/// `worker_max_rss` replace it: one sample over it may be a burst.
const RSS_SAMPLE_EVERY: Duration = Duration::from_secs(1);
const RSS_SAMPLES: u32 = 3;
/// How long the admin API waits for a worker's answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `berth --workers N`: supervises until SIGTERM or SIGINT, then drains every worker.
pub fn main(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(supervise(config)) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err}");
            err.exit_code()
        }
    }
}

async fn supervise(config: Config) -> Result<ExitCode, ServeError> {
    crate::server::check_apps_dir(&config.apps_dir)?;
    let bind_error = |source| ServeError::Bind {
        addr: config.listen,
        source,
    };
    let listener = if config.reuse_port {
        warn_unless_queues_migrate();
        listener::reserve_port(config.listen).map_err(bind_error)?
    } else {
        listener::bind(config.listen)
            .and_then(tokio::net::TcpListener::into_std)
            .map_err(bind_error)?
    };
    let admin = config
        .admin_listen
        .map(|addr| listener::bind(addr).map_err(|source| ServeError::Bind { addr, source }))
        .transpose()?;
    let program = std::env::current_exe().map_err(ServeError::Shadow)?;
    let addr = listener
        .local_addr()
        .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
    tracing::info!(
        "supervisor (pid {}) serving http://{addr} with {} workers",
        std::process::id(),
        config.workers
    );
    let (events, received) = mpsc::unbounded_channel();
    let supervisor = Arc::new(Supervisor {
        state: Mutex::new(Pool {
            slots: (0..config.workers).map(Slot::new).collect(),
            listener: Some(listener),
            stopping: None,
            ever_ready: false,
        }),
        program,
        args: std::env::args_os().skip(1).collect(),
        config,
        events,
        next_id: AtomicU64::new(1),
        pending: Mutex::new(HashMap::new()),
    });
    if let Some(listener) = admin {
        tokio::spawn(admin::serve(
            listener,
            Arc::new(Admin::Workers(Arc::clone(&supervisor) as _)),
        ));
    }
    Ok(supervisor.run(received).await)
}

/// The supervisor's state, shared with the admin API.
#[derive(Debug)]
pub struct Supervisor {
    config: Config,
    /// The `berth` binary, as found at start: a SIGHUP starts the file there now, which may
    /// be a new build.
    program: PathBuf,
    /// This process's arguments, which every worker gets.
    args: Vec<OsString>,
    state: Mutex<Pool>,
    events: mpsc::UnboundedSender<Event>,
    next_id: AtomicU64,
    /// Admin requests waiting for a worker's reply, by id.
    pending: Mutex<HashMap<u64, oneshot::Sender<(u16, Value)>>>,
}

#[derive(Debug)]
struct Pool {
    slots: Vec<Slot>,
    /// The HTTP listener workers inherit; dropped when stopping, so that new connections are
    /// refused once the last worker closes its copy.
    listener: Option<TcpListener>,
    /// When the drain must be over, once stopping.
    stopping: Option<Instant>,
    /// Whether any worker ever said it was ready.
    ever_ready: bool,
}

/// One of the N places for a worker.
#[derive(Debug)]
struct Slot {
    index: usize,
    /// Processes started for this place so far.
    generation: u64,
    /// The worker serving in this place.
    current: Option<Worker>,
    /// Its replacement, until it is ready (a rolling restart).
    incoming: Option<Worker>,
    /// Workers asked to drain and not exited yet.
    outgoing: Vec<Worker>,
    /// Replacements by reason.
    restarts: BTreeMap<Reason, u64>,
    /// Recent deaths, for the backoff and the crash-loop report.
    deaths: VecDeque<Instant>,
    /// When to start a worker in this empty place.
    respawn_at: Option<Instant>,
}

impl Slot {
    fn new(index: usize) -> Self {
        Slot {
            index,
            generation: 0,
            current: None,
            incoming: None,
            outgoing: Vec::new(),
            restarts: BTreeMap::new(),
            deaths: VecDeque::new(),
            respawn_at: Some(Instant::now()),
        }
    }

    fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.current
            .iter()
            .chain(&self.incoming)
            .chain(&self.outgoing)
    }

    fn workers_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        self.current
            .iter_mut()
            .chain(&mut self.incoming)
            .chain(&mut self.outgoing)
    }

    /// Takes the worker of `generation` out of the slot.
    fn take(&mut self, generation: u64) -> Option<Worker> {
        if self
            .current
            .as_ref()
            .is_some_and(|w| w.generation == generation)
        {
            return self.current.take();
        }
        if self
            .incoming
            .as_ref()
            .is_some_and(|w| w.generation == generation)
        {
            return self.incoming.take();
        }
        let at = self
            .outgoing
            .iter()
            .position(|w| w.generation == generation)?;
        Some(self.outgoing.swap_remove(at))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Draining,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Draining => "draining",
        }
    }
}

/// One worker process.
#[derive(Debug)]
struct Worker {
    pid: u32,
    generation: u64,
    state: State,
    started_at: SystemTime,
    started: Instant,
    calls: SharedCalls,
    /// Lines for its control socket.
    to_worker: mpsc::UnboundedSender<Vec<u8>>,
    /// Why the supervisor killed it, if it did.
    killed_for: Option<Reason>,
    /// Why it is being replaced while healthy, once a replacement is asked for.
    recycle: Option<Reason>,
    /// Its own `max_requests` and `max_lifetime`, jitter drawn.
    max_requests: Option<u64>,
    max_lifetime: Option<Duration>,
    /// Samples of its resident memory in a row above `worker_max_rss`, and when the last was
    /// taken.
    rss_over: u32,
    rss_sampled: Instant,
}

impl Worker {
    fn send(&self, message: &ToWorker) {
        let _ = self.to_worker.send(control::line(message));
    }

    fn kill(&mut self, reason: Reason) {
        self.killed_for = Some(reason);
        signal(self.pid, rustix::process::Signal::KILL);
    }

    fn drain(&mut self) {
        self.state = State::Draining;
        self.send(&ToWorker::Drain);
    }
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(err) = rustix::process::kill_process(pid, signal) {
        tracing::debug!("cannot signal pid {pid:?}: {err}");
    }
}

/// What the workers' tasks tell the supervisor's.
#[derive(Debug)]
enum Event {
    Ready {
        slot: usize,
        generation: u64,
    },
    Exited {
        slot: usize,
        generation: u64,
        status: std::io::Result<ExitStatus>,
    },
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Supervisor {
    /// Supervises until stopped; the exit code is the process's.
    async fn run(self: &Arc<Self>, mut events: mpsc::UnboundedReceiver<Event>) -> ExitCode {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut interrupt), Ok(mut terminate), Ok(mut hangup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rolling: VecDeque<usize> = VecDeque::new();
        loop {
            tokio::select! {
                Some(event) = events.recv() => {
                    if let Some(code) = self.on_event(event, &mut rolling) {
                        return code;
                    }
                }
                _ = tick.tick() => {}
                _ = interrupt.recv() => self.stop("SIGINT"),
                _ = terminate.recv() => self.stop("SIGTERM"),
                _ = hangup.recv() => {
                    let mut state = lock(&self.state);
                    if state.stopping.is_none() {
                        tracing::info!("received SIGHUP: replacing the workers one by one");
                        for slot in &mut state.slots {
                            if let Some(worker) = &mut slot.current {
                                worker.recycle = Some(Reason::Reload);
                            }
                            if !rolling.contains(&slot.index) {
                                rolling.push_back(slot.index);
                            }
                        }
                    }
                }
            }
            if let Some(code) = self.tick(&mut rolling) {
                return code;
            }
        }
    }

    fn stop(&self, signal_name: &str) {
        let mut state = lock(&self.state);
        if state.stopping.is_some() {
            return;
        }
        let timeout = self.config.drain_timeout;
        tracing::info!("received {signal_name}: draining the workers (up to {timeout:?})");
        state.stopping = Some(Instant::now() + timeout + Duration::from_secs(1));
        state.listener = None;
        for slot in &mut state.slots {
            slot.respawn_at = None;
            if let Some(incoming) = &mut slot.incoming {
                incoming.kill(Reason::Exit);
            }
            for worker in slot.current.iter_mut().chain(&mut slot.outgoing) {
                worker.drain();
            }
        }
    }

    fn on_event(&self, event: Event, rolling: &mut VecDeque<usize>) -> Option<ExitCode> {
        let mut state = lock(&self.state);
        match event {
            Event::Ready { slot, generation } => {
                state.ever_ready = true;
                let stopping = state.stopping.is_some();
                let slot = state.slots.get_mut(slot)?;
                if slot
                    .incoming
                    .as_ref()
                    .is_some_and(|w| w.generation == generation)
                {
                    // A replacement is ready: the worker it replaces drains.
                    let incoming = slot.incoming.take();
                    if let Some(mut old) = std::mem::replace(&mut slot.current, incoming) {
                        let reason = old.recycle.unwrap_or(Reason::Reload);
                        *slot.restarts.entry(reason).or_default() += 1;
                        tracing::info!(
                            "worker {} (pid {}) is replaced ({}): it drains",
                            slot.index,
                            old.pid,
                            reason.as_str()
                        );
                        old.drain();
                        slot.outgoing.push(old);
                    }
                    rolling.retain(|s| *s != slot.index);
                }
                let index = slot.index;
                if let Some(worker) = slot.workers_mut().find(|w| w.generation == generation) {
                    if worker.state == State::Starting {
                        worker.state = State::Ready;
                        tracing::info!(
                            "worker {} (pid {}) is ready after {:.2}s",
                            index,
                            worker.pid,
                            worker.started.elapsed().as_secs_f64()
                        );
                        if stopping {
                            worker.drain();
                        }
                    }
                }
                None
            }
            Event::Exited {
                slot,
                generation,
                status,
            } => {
                let ever_ready = state.ever_ready;
                let stopping = state.stopping.is_some();
                let slot = state.slots.get_mut(slot)?;
                let was_incoming = slot
                    .incoming
                    .as_ref()
                    .is_some_and(|w| w.generation == generation);
                let worker = slot.take(generation)?;
                if was_incoming && slot.current.is_some() {
                    // Not tried again: the worker it was to replace keeps serving.
                    tracing::error!(
                        "the replacement for worker {} died before it was ready; worker {} keeps \
                         serving",
                        slot.index,
                        slot.index
                    );
                    rolling.retain(|s| *s != slot.index);
                }
                let status = match status {
                    Ok(status) => status,
                    Err(err) => {
                        tracing::error!("cannot wait for worker {}: {err}", slot.index);
                        return None;
                    }
                };
                if worker.state == State::Draining && status.success() {
                    tracing::info!(
                        "worker {} (pid {}) drained and exited",
                        slot.index,
                        worker.pid
                    );
                } else {
                    self.died(slot, &worker, status, stopping);
                    if !ever_ready && status.code() == Some(2) {
                        tracing::error!(
                            "worker {} could not start (status 2: the configuration or the apps \
                             directory); stopping",
                            slot.index
                        );
                        drop(state);
                        self.stop("a worker's start-up error");
                        return Some(ExitCode::from(2));
                    }
                }
                if slot.current.is_none() && slot.incoming.is_none() && !stopping {
                    rolling.retain(|s| *s != slot.index);
                }
                None
            }
        }
    }

    /// Logs a worker's unexpected end, counts it and schedules its replacement.
    fn died(&self, slot: &mut Slot, worker: &Worker, status: ExitStatus, stopping: bool) {
        let reason = worker.killed_for.unwrap_or(if status.code().is_some() {
            Reason::Exit
        } else {
            Reason::Crash
        });
        let cause = match worker.killed_for {
            Some(Reason::Hang) => "was killed by the watchdog (stuck in one app call)".to_owned(),
            Some(Reason::Stall) => "was killed by the watchdog (its runtime stalled)".to_owned(),
            Some(Reason::Start) => "was killed: it did not get ready in time".to_owned(),
            _ => exit::describe(status),
        };
        let now = calls::now_ns();
        let inside = describe_calls(&worker.calls.calls(), now);
        let (_, in_flight) = worker.calls.requests();
        let pid = worker.pid;
        let index = slot.index;
        if stopping {
            tracing::warn!("worker {index} (pid {pid}) {cause} {inside} while stopping");
            return;
        }
        *slot.restarts.entry(reason).or_default() += 1;
        let died_at = Instant::now();
        slot.deaths.push_back(died_at);
        while slot
            .deaths
            .front()
            .is_some_and(|at| died_at.duration_since(*at) > LOOP_WINDOW)
        {
            slot.deaths.pop_front();
        }
        let deaths = slot.deaths.len();
        // The first two deaths in a minute are replaced at once, then the wait doubles.
        let backoff = if deaths <= 2 {
            Duration::ZERO
        } else {
            (Duration::from_millis(250) * 2u32.saturating_pow(deaths as u32 - 3)).min(MAX_BACKOFF)
        };
        tracing::error!(
            worker = index,
            pid,
            reason = reason.as_str(),
            "worker {index} (pid {pid}) {cause} {inside}; {in_flight} request(s) in flight on it \
             failed; replacing it{}",
            if backoff.is_zero() {
                String::new()
            } else {
                format!(" in {backoff:?}")
            }
        );
        if deaths >= LOOP_DEATHS {
            tracing::error!(
                worker = index,
                "worker {index} is crash-looping: {deaths} deaths in the last {}s; still \
                 replacing it, {backoff:?} apart (see the lines above for where it dies)",
                LOOP_WINDOW.as_secs()
            );
        }
        if slot.current.is_none() && slot.incoming.is_none() {
            slot.respawn_at = Some(died_at + backoff);
        }
    }

    /// The watchdog, due replacements, the rolling restart's next step, and the end of a
    /// drain.
    fn tick(self: &Arc<Self>, rolling: &mut VecDeque<usize>) -> Option<ExitCode> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        let now_ns = calls::now_ns();
        for slot in &mut state.slots {
            let index = slot.index;
            for worker in slot.workers_mut() {
                self.watch(index, worker, now_ns);
            }
        }
        if let Some(deadline) = state.stopping {
            let left: Vec<u32> = state
                .slots
                .iter()
                .flat_map(Slot::workers)
                .map(|w| w.pid)
                .collect();
            if left.is_empty() {
                tracing::info!("every worker has exited");
                return Some(ExitCode::SUCCESS);
            }
            if now >= deadline {
                tracing::warn!("drain timeout reached: killing workers {left:?}");
                for slot in &mut state.slots {
                    for worker in slot.workers_mut() {
                        worker.kill(Reason::Exit);
                    }
                }
            }
            return None;
        }
        let Pool {
            slots, listener, ..
        } = &mut *state;
        for slot in slots.iter_mut() {
            let Some(worker) = &mut slot.current else {
                continue;
            };
            if let Some(reason) = self.due_for_recycling(slot.index, worker, now) {
                worker.recycle = Some(reason);
                if !rolling.contains(&slot.index) {
                    rolling.push_back(slot.index);
                }
            }
        }
        let listener = listener.as_ref()?;
        for slot in slots.iter_mut() {
            if slot.respawn_at.is_some_and(|at| at <= now) && slot.current.is_none() {
                slot.respawn_at = None;
                match self.spawn(slot, listener) {
                    Ok(worker) => slot.current = Some(worker),
                    Err(err) => {
                        tracing::error!(
                            "cannot start worker {}: {err}; retrying in 1s",
                            slot.index
                        );
                        slot.respawn_at = Some(now + Duration::from_secs(1));
                    }
                }
            }
        }
        // One replacement at a time: the next starts when the last is ready.
        if !slots.iter().any(|s| s.incoming.is_some()) {
            while let Some(&next) = rolling.front() {
                let Some(slot) = slots.get_mut(next) else {
                    rolling.pop_front();
                    continue;
                };
                if slot.current.is_none() {
                    // Being replaced anyway.
                    rolling.pop_front();
                    continue;
                }
                match self.spawn(slot, listener) {
                    Ok(worker) => slot.incoming = Some(worker),
                    Err(err) => {
                        tracing::error!("cannot start a replacement for worker {next}: {err}");
                        rolling.pop_front();
                    }
                }
                break;
            }
        }
        None
    }

    /// Whether a healthy, ready `worker` is due for replacement, and why; logs it the first
    /// time.
    fn due_for_recycling(&self, index: usize, worker: &mut Worker, now: Instant) -> Option<Reason> {
        if worker.state != State::Ready || worker.recycle.is_some() {
            return None;
        }
        let pid = worker.pid;
        let (requests, _) = worker.calls.requests();
        if let Some(max) = worker.max_requests.filter(|max| requests >= *max) {
            tracing::info!("worker {index} (pid {pid}) reached max_requests ({max}): replacing it");
            return Some(Reason::MaxRequests);
        }
        if let Some(max) = worker
            .max_lifetime
            .filter(|max| worker.started.elapsed() >= *max)
        {
            tracing::info!(
                "worker {index} (pid {pid}) reached max_lifetime ({max:?}): replacing it"
            );
            return Some(Reason::MaxLifetime);
        }
        let max_rss = self.config.recycle.max_rss?;
        if now.duration_since(worker.rss_sampled) < RSS_SAMPLE_EVERY {
            return None;
        }
        worker.rss_sampled = now;
        let rss = rss_bytes(pid).unwrap_or(0);
        if rss <= max_rss {
            worker.rss_over = 0;
            return None;
        }
        worker.rss_over += 1;
        if worker.rss_over < RSS_SAMPLES {
            return None;
        }
        tracing::warn!(
            "worker {index} (pid {pid}) has used {} MiB of memory for {RSS_SAMPLES} samples in a \
             row, over worker_max_rss ({} MiB): replacing it",
            rss >> 20,
            max_rss >> 20
        );
        Some(Reason::MaxRss)
    }

    /// Kills `worker` if a thread of it is stuck in one app call past the call's limit plus
    /// `hang_grace`, if its runtime stopped ticking outside app code for `hang_grace`, or if
    /// it never got ready.
    fn watch(&self, index: usize, worker: &mut Worker, now_ns: u64) {
        if worker.killed_for.is_some() {
            return;
        }
        let grace = self.config.hang_grace;
        let calls = worker.calls.calls();
        for call in &calls {
            let limit = call.limit.unwrap_or(self.config.request_timeout);
            let elapsed = call.elapsed(now_ns);
            if elapsed > limit + grace {
                tracing::error!(
                    worker = index,
                    pid = worker.pid,
                    "worker {index} (pid {}) has been inside app {:?}, {:?}, for {:.1}s, past its \
                     limit of {limit:?} + hang_grace {grace:?}: killing it",
                    worker.pid,
                    call.app,
                    call.request,
                    elapsed.as_secs_f64()
                );
                worker.kill(Reason::Hang);
                return;
            }
        }
        match worker.state {
            State::Starting if worker.started.elapsed() > START_TIMEOUT && calls.is_empty() => {
                tracing::error!(
                    "worker {index} (pid {}) did not get ready within {START_TIMEOUT:?}: killing it",
                    worker.pid
                );
                worker.kill(Reason::Start);
            }
            State::Ready | State::Draining if calls.is_empty() => {
                let late = worker
                    .calls
                    .heartbeat_age(now_ns)
                    .is_some_and(|age| age > calls::HEARTBEAT + grace);
                if late {
                    tracing::error!(
                        "worker {index} (pid {})'s runtime has not run its tasks for over \
                         {grace:?}, outside any app call: killing it",
                        worker.pid
                    );
                    worker.kill(Reason::Stall);
                }
            }
            _ => {}
        }
    }

    /// Starts a worker for `slot`: the same binary and arguments, its control socket on its
    /// standard input, in a process group of its own (a terminal's Ctrl-C reaches only the
    /// supervisor, which drains the workers).
    fn spawn(self: &Arc<Self>, slot: &mut Slot, listener: &TcpListener) -> std::io::Result<Worker> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let (table, table_fd) = SharedCalls::create()?;
        slot.generation += 1;
        let generation = slot.generation;
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env(
                ENV,
                format!("{}:{generation}:{}", slot.index, std::process::id()),
            )
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn()?;
        let recycle = &self.config.recycle;
        control::send_fds(&ours, listener.as_fd(), table_fd.as_fd())?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(
            "started worker {} (pid {pid}, generation {generation})",
            slot.index
        );

        ours.set_nonblocking(true)?;
        let ours = tokio::net::UnixStream::from_std(ours)?;
        let (reader, mut writer) = ours.into_split();
        let (to_worker, mut lines) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                if writer.write_all(&line).await.is_err() {
                    break;
                }
            }
        });
        let index = slot.index;
        let events = self.events.clone();
        let supervisor = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<FromWorker>(&line) {
                    Ok(FromWorker::Ready) => {
                        let _ = events.send(Event::Ready {
                            slot: index,
                            generation,
                        });
                    }
                    Ok(FromWorker::Publish { channel, payload }) => {
                        if let Some(supervisor) = supervisor.upgrade() {
                            supervisor.relay(index, generation, channel, payload);
                        }
                    }
                    Ok(FromWorker::Reply { id, status, body }) => {
                        if let Some(supervisor) = supervisor.upgrade() {
                            if let Some(waiting) = lock(&supervisor.pending).remove(&id) {
                                let _ = waiting.send((status, body));
                            }
                        }
                    }
                    Err(err) => tracing::warn!("worker {index}: bad control message ({err})"),
                }
            }
        });
        let events = self.events.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = events.send(Event::Exited {
                slot: index,
                generation,
                status,
            });
        });
        Ok(Worker {
            pid,
            generation,
            state: State::Starting,
            started_at: SystemTime::now(),
            started: Instant::now(),
            calls: table,
            to_worker,
            killed_for: None,
            recycle: None,
            max_requests: recycle
                .max_requests
                .map(|n| n + jitter(recycle.max_requests_jitter)),
            max_lifetime: recycle.max_lifetime.map(|lifetime| {
                let jitter_ms = recycle.max_lifetime_jitter.as_millis() as u64;
                lifetime + Duration::from_millis(jitter(jitter_ms))
            }),
            rss_over: 0,
            rss_sampled: Instant::now(),
        })
    }

    /// Hands a message published in one worker to every other.
    fn relay(&self, from_slot: usize, from_generation: u64, channel: String, payload: String) {
        let line = control::line(&ToWorker::Deliver { channel, payload });
        let state = lock(&self.state);
        for slot in &state.slots {
            for worker in slot.workers() {
                if (slot.index, worker.generation) != (from_slot, from_generation) {
                    let _ = worker.to_worker.send(line.clone());
                }
            }
        }
    }

    /// `GET /workers`.
    fn workers(&self) -> Value {
        let state = lock(&self.state);
        let now_ns = calls::now_ns();
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        let mut workers = Vec::new();
        for slot in &state.slots {
            let restarts: BTreeMap<&str, u64> = slot
                .restarts
                .iter()
                .map(|(reason, n)| (reason.as_str(), *n))
                .collect();
            for (reason, n) in &restarts {
                *totals.entry(reason).or_default() += n;
            }
            for worker in slot.workers() {
                let (requests, in_flight) = worker.calls.requests();
                let calls: Vec<Value> = worker
                    .calls
                    .calls()
                    .iter()
                    .map(|call| {
                        json!({
                            "thread": call.thread,
                            "app": call.app,
                            "request": call.request,
                            "for_ms": call.elapsed(now_ns).as_millis() as u64,
                        })
                    })
                    .collect();
                workers.push(json!({
                    "slot": slot.index,
                    "pid": worker.pid,
                    "generation": worker.generation,
                    "state": worker.state.as_str(),
                    "started_at": humantime::format_rfc3339_seconds(worker.started_at).to_string(),
                    "uptime_secs": worker.started.elapsed().as_secs(),
                    "requests": requests,
                    "in_flight": in_flight,
                    "rss_bytes": rss_bytes(worker.pid),
                    "heartbeat_ms": worker.calls.heartbeat_age(now_ns).map(|age| age.as_millis() as u64),
                    "calls": calls,
                    "restarts": restarts,
                }));
            }
        }
        json!({
            "workers": workers,
            "restarts": totals,
            "stopping": state.stopping.is_some(),
        })
    }

    /// Asks every ready worker the admin request, and gathers their answers.
    async fn ask_workers(&self, method: &Method, path: &str) -> Answer {
        let mut waiting = Vec::new();
        {
            let state = lock(&self.state);
            for slot in &state.slots {
                let Some(worker) = slot.current.as_ref().filter(|w| w.state == State::Ready) else {
                    continue;
                };
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let (reply, replied) = oneshot::channel();
                lock(&self.pending).insert(id, reply);
                worker.send(&ToWorker::Admin {
                    id,
                    method: method.to_string(),
                    path: path.to_owned(),
                });
                waiting.push((slot.index, worker.pid, id, replied));
            }
        }
        if waiting.is_empty() {
            return Answer::Json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "no worker is ready" }),
            );
        }
        let mut status = StatusCode::OK;
        let mut answers: Vec<Value> = Vec::new();
        for (slot, pid, id, replied) in waiting {
            let (code, body) = match tokio::time::timeout(ADMIN_TIMEOUT, replied).await {
                Ok(Ok(reply)) => reply,
                _ => {
                    lock(&self.pending).remove(&id);
                    (504, json!({ "error": "the worker did not answer" }))
                }
            };
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            if status == StatusCode::OK {
                status = code;
            }
            answers
                .push(json!({ "slot": slot, "pid": pid, "status": code.as_u16(), "body": body }));
        }
        let mut body = json!({ "workers": &answers });
        if path == "/apps" {
            body["apps"] = merge_apps(&answers);
        }
        Answer::Json(status, body)
    }
}

impl admin::Supervision for Supervisor {
    fn answer<'a>(
        &'a self,
        method: &'a Method,
        path: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Answer> + Send + 'a>> {
        Box::pin(async move {
            match path {
                "/healthz" if method == Method::GET => Answer::Text(StatusCode::OK, "ok\n".into()),
                "/readyz" if method == Method::GET => {
                    let ready = lock(&self.state)
                        .slots
                        .iter()
                        .any(|s| s.current.as_ref().is_some_and(|w| w.state == State::Ready));
                    if ready {
                        Answer::Text(StatusCode::OK, "ready\n".into())
                    } else {
                        Answer::Text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no worker is ready\n".into(),
                        )
                    }
                }
                "/workers" if method == Method::GET => Answer::Json(StatusCode::OK, self.workers()),
                _ => self.ask_workers(method, path).await,
            }
        })
    }
}

/// The apps of every worker's `/apps`, one entry per version and state: which workers have it
/// mounted or retiring, and their requests summed. A reload that reached only some workers
/// shows as two versions of one app.
fn merge_apps(answers: &[Value]) -> Value {
    let mut merged: BTreeMap<(String, String, String, &str), Value> = BTreeMap::new();
    for answer in answers {
        let slot = answer["slot"].clone();
        let body = &answer["body"];
        let lists = [("mounted", &body["apps"]), ("retiring", &body["retiring"])];
        for (state, list) in lists {
            for app in list.as_array().into_iter().flatten() {
                let text = |key: &str| app[key].as_str().unwrap_or_default().to_owned();
                let key = (text("name"), text("version"), text("file_hash"), state);
                let entry = merged.entry(key).or_insert_with(|| {
                    json!({
                        "name": app["name"],
                        "version": app["version"],
                        "file_hash": app.get("file_hash"),
                        "mount": app.get("mount"),
                        "state": state,
                        "workers": [],
                        "requests": 0,
                        "errors": 0,
                        "in_flight": 0,
                    })
                });
                if let Some(workers) = entry["workers"].as_array_mut() {
                    workers.push(slot.clone());
                }
                for counter in ["requests", "errors", "in_flight"] {
                    let sum =
                        entry[counter].as_u64().unwrap_or(0) + app[counter].as_u64().unwrap_or(0);
                    entry[counter] = sum.into();
                }
            }
        }
    }
    Value::Array(merged.into_values().collect())
}

/// "inside app "faults", GET /faults/segv, for 0.0s" for each call, or that there was none.
fn describe_calls(calls: &[Call], now_ns: u64) -> String {
    if calls.is_empty() {
        return "outside any app call".to_owned();
    }
    let each: Vec<String> = calls
        .iter()
        .map(|call| {
            format!(
                "inside app {:?}, {:?}, for {:.1}s",
                call.app,
                call.request,
                call.elapsed(now_ns).as_secs_f64()
            )
        })
        .collect();
    each.join("; and ")
}

/// With `reuse_port`, each worker's socket has a queue of its own: when a worker closes it
/// (replaced, or killed), the connections still queued there are reset, unless the kernel
/// moves them to another worker's queue (`net.ipv4.tcp_migrate_req = 1`, Linux 5.14 and later).
fn warn_unless_queues_migrate() {
    let setting = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req");
    if setting.map_or(true, |value| value.trim() != "1") {
        tracing::warn!(
            "reuse_port: net.ipv4.tcp_migrate_req is not 1, so the connections queued to a \
             worker that is replaced or killed are reset; set it with \
             `sysctl -w net.ipv4.tcp_migrate_req=1` (Linux 5.14+)"
        );
    }
}

/// A number in `0..=max`, different for each worker.
fn jitter(max: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    if max == 0 {
        return 0;
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(calls::now_ns().into());
    hasher.finish() % (max + 1)
}

/// The resident set size of process `pid`, from `/proc`.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
