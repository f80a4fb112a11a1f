//! Real data servers for the tests: a PostgreSQL cluster and a Redis server, each on an
//! ephemeral loopback port in a temporary directory of its own, stopped when dropped.
//!
//! They are Debian's `postgresql` and `redis-server`, found on this machine (`.ci/run` installs
//! them); a test that needs one fails with the package to install when it is missing. PostgreSQL
//! refuses to run as root, so when the tests run as root its commands run as the `postgres`
//! user the package creates, in a directory handed to that user.

use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A free port on 127.0.0.1 (free when this returns: the servers cannot take port 0 and report
/// it the way Berth does).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// Whether something accepts connections on `127.0.0.1:port`.
fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Runs `command`, panicking with its output unless it succeeds.
fn run(command: &mut Command, what: &str) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {what} ({command:?}): {err}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A PostgreSQL cluster of its own: `initdb` into a temporary directory, then `pg_ctl` on a
/// free port, listening on 127.0.0.1 only, with trust authentication for the user `berth`.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// `Some("postgres")` when the tests run as root.
    run_as: Option<&'static str>,
}

impl Postgres {
    /// The database user every test connects as.
    pub const USER: &'static str = "berth";

    /// Creates a cluster and starts it.
    pub fn start() -> Postgres {
        let bin = postgres_bin();
        let run_as = is_root().then_some("postgres");
        let dir = tempfile::Builder::new()
            .prefix("berth-test-postgres-")
            .tempdir()
            .expect("create a temporary directory for PostgreSQL");
        if let Some(user) = run_as {
            run(
                Command::new("chown").args([user, &dir.path().display().to_string()]),
                "chown of PostgreSQL's directory",
            );
        }
        let postgres = Postgres {
            dir,
            bin,
            port: free_port(),
            run_as,
        };
        let data = postgres.data_dir();
        run(
            postgres
                .command("initdb")
                .args([
                    "--no-sync",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--username",
                    Self::USER,
                    "--pgdata",
                ])
                .arg(&data),
            "initdb",
        );
        postgres.resume();
        postgres
    }

    /// The port it listens on (the same across [`Postgres::stop`] and [`Postgres::resume`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` (`postgres` always exists).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{database}",
            Self::USER,
            self.port
        )
    }

    /// Stops the server at once, as a crash or a restart would (`pg_ctl stop -m immediate`).
    pub fn stop(&self) {
        run(
            self.command("pg_ctl")
                .args(["stop", "--mode=immediate", "--wait", "--pgdata"])
                .arg(self.data_dir()),
            "pg_ctl stop",
        );
    }

    /// Starts the stopped server again on the same port and waits until it accepts connections.
    pub fn resume(&self) {
        let options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(
            self.command("pg_ctl")
                .args(["start", "--wait", "--options", &options, "--log"])
                .arg(self.dir.path().join("server.log"))
                .arg("--pgdata")
                .arg(self.data_dir()),
            "pg_ctl start",
        );
        wait_for_port(self.port, "PostgreSQL");
    }

    /// Runs `sql` with `psql` (a client nobody here wrote) and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let output = run(
            Command::new(self.bin.join("psql")).args([
                "--no-psqlrc",
                "--tuples-only",
                "--no-align",
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--username",
                Self::USER,
                "--dbname",
                "postgres",
                "--command",
                sql,
            ]),
            "psql",
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Restarts the server with TLS on (`ssl = on`), serving `cert_pem` with `key_pem`: a
    /// client that asks for TLS gets it, and one that does not still connects in the clear.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) {
        let data = self.data_dir();
        for (name, contents) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, contents)
                .unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("the key readable by its owner only, as PostgreSQL demands");
            if let Some(user) = self.run_as {
                run(
                    Command::new("chown").arg(user).arg(&path),
                    "chown of the TLS files",
                );
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("\nssl = on\n");
        std::fs::write(&conf, text).expect("write postgresql.conf");
        self.stop();
        self.resume();
    }

    /// Starts `psql` running `sql` in a session of its own named `application_name`, without
    /// waiting for it: a transaction that holds a lock, say.
    pub fn psql_background(&self, application_name: &str, sql: &str) -> Child {
        Command::new(self.bin.join("psql"))
            .env("PGAPPNAME", application_name)
            .args(["--no-psqlrc", "--quiet", "--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args([
                "--username",
                Self::USER,
                "--dbname",
                "postgres",
                "--command",
                sql,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start psql: {err}"))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One of PostgreSQL's programs, as the user it runs as.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        match self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if accepts(self.port) {
            let _ = self
                .command("pg_ctl")
                .args(["stop", "--mode=immediate", "--wait", "--pgdata"])
                .arg(self.data_dir())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Where Debian's PostgreSQL keeps its programs (`/usr/lib/postgresql/<version>/bin`), the
/// newest version when there are several.
fn postgres_bin() -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql").ok();
    let newest = versions
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("bin/initdb").is_file())
        .max_by_key(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0)
        });
    match newest {
        Some(version) => version.join("bin"),
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): \
             apt-get install postgresql"
        ),
    }
}

/// Whether the tests run as root: `/proc/self` belongs to the process's effective user.
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// A Redis server of its own, with nothing saved to disk.
#[derive(Debug)]
pub struct Redis {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts `redis-server` and waits until it accepts connections.
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-redis-")
            .tempdir()
            .expect("create a temporary directory for Redis");
        let mut redis = Redis {
            dir,
            port: free_port(),
            child: None,
        };
        redis.resume();
        redis
    }

    /// The port it listens on (the same across [`Redis::stop`] and [`Redis::resume`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same port.
    pub fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start redis-server ({err}): apt-get install redis-server")
            });
        self.child = Some(child);
        wait_for_port(self.port, "Redis");
    }

    /// Runs one command with `redis-cli` (a client nobody here wrote) and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = run(
            Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(args),
            "redis-cli",
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for_port(port: u16, what: &str) {
    let started = Instant::now();
    while !accepts(port) {
        assert!(
            started.elapsed() < START_TIMEOUT,
            "{what} did not accept connections on 127.0.0.1:{port} within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The servers themselves: each starts, answers its own client, survives a restart on the same
/// port, and is gone once dropped.
#[test]
fn postgres_and_redis_start_answer_restart_and_stop() {
    let postgres = Postgres::start();
    assert_eq!(postgres.psql("select 40 + 2"), "42");
    postgres.stop();
    assert!(!accepts(postgres.port()), "stopped");
    postgres.resume();
    assert_eq!(postgres.psql("select current_user"), Postgres::USER);
    assert!(
        postgres
            .url("postgres")
            .ends_with(&format!(":{}/postgres", postgres.port()))
    );

    let mut redis = Redis::start();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
    assert_eq!(redis.cli(&["ping"]), "PONG");
    assert_eq!(redis.cli(&["incrby", "k", "5"]), "5");
    redis.stop();
    assert!(!accepts(redis.port()), "stopped");
    redis.resume();
    assert_eq!(
        redis.cli(&["incr", "k"]),
        "1",
        "nothing was saved across the restart"
    );

    let ports = (postgres.port(), redis.port());
    drop((postgres, redis));
    assert!(
        !accepts(ports.0) && !accepts(ports.1),
        "both gone when dropped"
    );
}
