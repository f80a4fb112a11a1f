//! A worker: `berth` started by its supervisor, with the same command line and [`ENV`] set. It
//! takes the listener and its call table from the control socket on its standard input, loads
//! the apps, says it is ready, and serves like a single process, until the supervisor asks it
//! to drain, it gets SIGTERM, or the supervisor is gone.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use serde_json::json;

use super::control::{self, FromWorker, ToWorker};
use crate::apps::Registry;
use crate::config::Config;
use crate::host::calls;
use crate::host::pubsub::Relay;
use crate::plugin::shared::SharedCalls;
use crate::server::{Listeners, ServeError};
use crate::{admin, server};

/// Set by the supervisor in each worker's environment: `<slot>:<generation>:<supervisor pid>`.
pub const ENV: &str = "BERTH_WORKER";

/// Which worker this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Its place among the workers, from 0.
    pub slot: usize,
    /// How many processes have held that place, this one included.
    pub generation: u64,
    /// The supervisor's process id.
    pub supervisor: u32,
}

impl Identity {
    /// This process's identity, if a supervisor started it; an error if [`ENV`] is malformed.
    pub fn from_env() -> Option<Result<Identity, String>> {
        let value = std::env::var(ENV).ok()?;
        let mut parts = value.split(':').map(str::parse::<u64>);
        Some(
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(Ok(slot)), Some(Ok(generation)), Some(Ok(supervisor)), None) => {
                    Ok(Identity {
                        slot: usize::try_from(slot).unwrap_or(usize::MAX),
                        generation,
                        supervisor: u32::try_from(supervisor).unwrap_or(0),
                    })
                }
                _ => Err(format!(
                    "{ENV}={value:?} is not <slot>:<generation>:<supervisor pid>; it is set by \
                 berth --workers for its workers, not by hand"
                )),
            },
        )
    }
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot die with the supervisor: {0}")]
    ParentDeath(std::io::Error),
    #[error("the supervisor (pid {0}) is already gone")]
    Orphan(u32),
    #[error("cannot read the control socket on standard input: {0}")]
    Control(std::io::Error),
    #[error("cannot map the call table: {0}")]
    Calls(std::io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Runs the worker until it has drained; its exit status is what the supervisor logs. The
/// caller names the process in the log first ([`crate::logging::name_process`]).
pub fn main(config: Config, identity: Identity) -> ExitCode {
    match serve(config, identity) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            match err {
                StartError::Serve(err) => err.exit_code(),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn serve(config: Config, identity: Identity) -> Result<(), StartError> {
    // Set before checking the parent: a supervisor that dies after the check still takes this
    // worker with it.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|err| StartError::ParentDeath(err.into()))?;
    if rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get())
        != Some(identity.supervisor as i32)
    {
        return Err(StartError::Orphan(identity.supervisor));
    }
    let control = rustix::io::dup(rustix::stdio::stdin())
        .map(UnixStream::from)
        .map_err(|err| StartError::Control(err.into()))?;
    let fds = control::recv_fds(&control).map_err(StartError::Control)?;
    let listener = std::net::TcpListener::from(fds.listener);
    listener
        .set_nonblocking(true)
        .map_err(StartError::Control)?;
    let reuse_port = if config.reuse_port {
        // The supervisor's socket only holds the port: this worker listens on its own.
        Some(listener.local_addr().map_err(StartError::Control)?)
    } else {
        None
    };
    let table = SharedCalls::open(&File::from(fds.calls)).map_err(StartError::Calls)?;
    let table = table.leak();
    table.init();
    calls::install(table);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads.unwrap_or(1))
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let writer = Arc::new(Mutex::new(
        control.try_clone().map_err(StartError::Control)?,
    ));
    let (commands, mut received) = tokio::sync::mpsc::unbounded_channel();
    read_commands(control, commands)?;

    runtime.block_on(async move {
        let listener = match reuse_port {
            Some(addr) => crate::http::bind_reuse_port(addr)
                .map_err(|source| ServeError::Bind { addr, source })?,
            None => tokio::net::TcpListener::from_std(listener).map_err(StartError::Control)?,
        };
        let (drain, drained) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            tokio::select! {
                () = server::shutdown_signal() => {}
                _ = drained => tracing::info!("draining, as the supervisor asked"),
            }
        };
        let listeners = Listeners {
            http: listener,
            admin: None,
        };
        let writer_for_ready = Arc::clone(&writer);
        server::serve(listeners, config, shutdown, move |registry| {
            let relay_writer = Arc::clone(&writer_for_ready);
            registry
                .broker()
                .relay_to(Relay(Box::new(move |channel, payload| {
                    let publish = FromWorker::Publish {
                        channel: channel.to_owned(),
                        payload: control::encode(payload),
                    };
                    send(&relay_writer, &publish);
                })));
            send(&writer_for_ready, &FromWorker::Ready);
            let registry = Arc::clone(registry);
            tokio::spawn(async move {
                let mut drain = Some(drain);
                while let Some(command) = received.recv().await {
                    match command {
                        ToWorker::Drain => {
                            if let Some(drain) = drain.take() {
                                let _ = drain.send(());
                            }
                        }
                        ToWorker::Deliver { channel, payload } => match control::decode(&payload) {
                            Some(payload) => {
                                registry.broker().deliver_relayed(&channel, payload.into());
                            }
                            None => tracing::warn!(channel, "a relayed message is not base64"),
                        },
                        ToWorker::Admin { id, method, path } => {
                            tokio::spawn(answer(
                                Arc::clone(&registry),
                                Arc::clone(&writer),
                                id,
                                method,
                                path,
                            ));
                        }
                    }
                }
            });
        })
        .await
        .map_err(StartError::from)
    })
}

/// Reads the supervisor's commands on a thread of its own, which sees the socket close even
/// while every runtime thread is blocked: the supervisor is gone, and so is this worker.
fn read_commands(
    control: UnixStream,
    commands: tokio::sync::mpsc::UnboundedSender<ToWorker>,
) -> Result<(), StartError> {
    std::thread::Builder::new()
        .name("berth-control".into())
        .spawn(move || {
            for line in BufReader::new(control).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<ToWorker>(&line) {
                    Ok(command) => {
                        let _ = commands.send(command);
                    }
                    Err(err) => tracing::warn!("ignored a control message ({err}): {line:?}"),
                }
            }
            tracing::error!("the supervisor is gone: exiting");
            std::process::exit(1);
        })
        .map(drop)
        .map_err(StartError::Control)
}

/// Answers an admin request about this worker's apps.
async fn answer(
    registry: Arc<Registry>,
    writer: Arc<Mutex<UnixStream>>,
    id: u64,
    method: String,
    path: String,
) {
    let (status, body) = match Method::from_bytes(method.as_bytes()) {
        Ok(method) => {
            let answer = admin::answer(&registry, &method, &path).await;
            (answer.status(), answer.into_json())
        }
        Err(_) => (
            StatusCode::BAD_REQUEST,
            json!({ "error": format!("bad method {method:?}") }),
        ),
    };
    let reply = FromWorker::Reply {
        id,
        status: status.as_u16(),
        body,
    };
    send(&writer, &reply);
}

/// Writes one message to the supervisor; a supervisor that is gone ends the process anyway.
fn send(writer: &Mutex<UnixStream>, message: &FromWorker) {
    let line = control::line(message);
    let mut writer = writer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(err) = writer.write_all(&line) {
        tracing::warn!("cannot write to the supervisor: {err}");
    }
}
