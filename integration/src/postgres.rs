//! A throwaway PostgreSQL cluster: `initdb` in a temp dir and a `postgres`
//! of its own on a random loopback port, gone with the value. Tests, the
//! benchmarks and the sandbox's `--ha` mode run on it; nothing touches a
//! system instance. PostgreSQL refuses to run as root, so as root the
//! server runs as the `postgres` user (Debian's package makes it) or
//! `nobody`.

use anyhow::{Context, Result, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Settings of a cluster nobody minds losing.
const FAST: &[&str] = &[
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
];

/// A running throwaway cluster.
pub struct Scratch {
    child: Child,
    port: u16,
    /// Its data and Unix socket; removed with it.
    dir: tempfile::TempDir,
    /// Where the server's log goes.
    pub log: PathBuf,
    /// How to start it again: its command line.
    server: Vec<std::ffi::OsString>,
}

/// The directory of PostgreSQL's programs: `FERRY_PG_BIN`, or Debian's
/// newest `/usr/lib/postgresql/N/bin`, or wherever `initdb` is on PATH.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("FERRY_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("postgres").exists())
    })
}

/// Whether PostgreSQL can be run here.
pub fn available() -> bool {
    bin_dir().is_some()
}

/// The user the server runs as, when this process is root.
fn server_user() -> Option<&'static str> {
    if !rustix::process::getuid().is_root() {
        return None;
    }
    let exists = |u: &str| {
        Command::new("id")
            .arg("-u")
            .arg(u)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    Some(if exists("postgres") {
        "postgres"
    } else {
        "nobody"
    })
}

/// `program` run as the server's user.
fn command(program: &Path, user: Option<&str>) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={u}"))
                .arg(format!(
                    "--regid={}",
                    if u == "nobody" { "nogroup" } else { u }
                ))
                .arg("--init-groups")
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

impl Scratch {
    /// A cluster for tests: no fsync (a crash loses it, and that is fine).
    pub fn start() -> Result<Scratch> {
        Self::start_with(FAST, None)
    }

    /// A cluster with PostgreSQL's durable defaults (benchmarks).
    pub fn durable() -> Result<Scratch> {
        Self::start_with(&[], None)
    }

    /// A cluster that takes TCP connections over TLS only, with this
    /// certificate and key (PEM); plaintext only on its Unix socket.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Result<Scratch> {
        Self::start_with(FAST, Some((cert_pem, key_pem)))
    }

    fn start_with(settings: &[&str], tls: Option<(&str, &str)>) -> Result<Scratch> {
        let bin = bin_dir().context(
            "PostgreSQL is not installed (Debian: apt-get install postgresql; or set FERRY_PG_BIN)",
        )?;
        let user = server_user();
        let dir = tempfile::Builder::new().prefix("ferry-pg-").tempdir()?;
        if let Some(u) = user {
            let status = Command::new("chown")
                .arg(u)
                .arg(dir.path())
                .status()
                .context("chown")?;
            if !status.success() {
                bail!("chown {u} {}: {status}", dir.path().display());
            }
        }
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let out = command(&bin.join("initdb"), user)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "ferry",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut settings: Vec<&str> = settings.to_vec();
        if let Some((cert, key)) = tls {
            let owned = |path: &Path, text: &str| -> Result<()> {
                use std::os::unix::fs::PermissionsExt;
                std::fs::write(path, text)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                if let Some(u) = user {
                    let status = Command::new("chown").arg(u).arg(path).status()?;
                    anyhow::ensure!(status.success(), "chown {u} {}", path.display());
                }
                Ok(())
            };
            owned(&data.join("server.crt"), cert)?;
            owned(&data.join("server.key"), key)?;
            owned(
                &data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
            )?;
            settings.push("ssl=on");
        }
        // A free port now; another process could take it before the server
        // binds, so a failed start tries again on another.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut cmd = command(&bin.join("postgres"), user);
            cmd.arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(dir.path())
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=300",
                ]);
            for s in &settings {
                cmd.args(["-c", s]);
            }
            let server: Vec<std::ffi::OsString> = std::iter::once(cmd.get_program().to_owned())
                .chain(cmd.get_args().map(|a| a.to_owned()))
                .collect();
            let mut child = spawn(&server, &log)?;
            match wait_ready(&mut child, &data, &log, Duration::from_secs(30)) {
                Ok(()) => {
                    return Ok(Scratch {
                        server,
                        child,
                        port,
                        dir,
                        log,
                    });
                }
                // Exited: most likely the port was taken meanwhile.
                Err(e) if child.try_wait()?.is_some() => {
                    tracing::warn!(port, error = %e, "postgres did not start; trying another port");
                }
                Err(e) => {
                    stop(&mut child);
                    return Err(e);
                }
            }
        }
        bail!(
            "postgres did not start on any of 5 ports: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process (its backends are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The DSN of database `name` (which [`Scratch::create`] makes).
    pub fn dsn(&self, name: &str) -> String {
        format!("postgres://ferry@127.0.0.1:{}/{name}", self.port)
    }

    /// Database `name` over the server's Unix socket (always plaintext).
    pub fn socket_dsn(&self, name: &str) -> String {
        format!(
            "host={} port={} user=ferry dbname={name}",
            self.dir.path().display(),
            self.port
        )
    }

    /// Makes an empty database and returns its DSN.
    pub async fn create(&self, name: &str) -> Result<String> {
        let (client, connection) =
            tokio_postgres::connect(&self.socket_dsn("postgres"), tokio_postgres::NoTls)
                .await
                .context("connecting to the scratch PostgreSQL")?;
        let task = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("creating database {name}"))?;
        drop(client);
        let _ = task.await;
        Ok(self.dsn(name))
    }

    /// Runs SQL in database `name` (tests stage what a coordinator would
    /// find).
    pub async fn execute(&self, name: &str, sql: &str) -> Result<()> {
        let (client, connection) =
            tokio_postgres::connect(&self.socket_dsn(name), tokio_postgres::NoTls)
                .await
                .with_context(|| format!("connecting to database {name}"))?;
        let task = tokio::spawn(connection);
        client
            .batch_execute(sql)
            .await
            .with_context(|| sql.to_string())?;
        drop(client);
        let _ = task.await;
        Ok(())
    }

    /// Stops the server at once (as a crash would).
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Starts the server again (after [`Scratch::kill`]), on the same port
    /// with the same data: a database that comes back.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            bail!("the server is still running");
        }
        // The killed server's pid file says "ready": not this one's word.
        let _ = std::fs::remove_file(self.dir.path().join("data/postmaster.pid"));
        self.child = spawn(&self.server, &self.log)?;
        wait_ready(
            &mut self.child,
            &self.dir.path().join("data"),
            &self.log,
            Duration::from_secs(30),
        )
    }
}

/// Runs the server's command line, its output appended to `log`.
fn spawn(server: &[std::ffi::OsString], log: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(&server[0])
        .args(&server[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting postgres")
}

/// Waits until the server accepts connections: it writes "ready" into
/// `postmaster.pid` then.
fn wait_ready(child: &mut Child, data: &Path, log: &Path, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "postgres exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let pid = std::fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
        if pid.lines().any(|l| l.trim() == "ready") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "postgres not ready after {within:?}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Immediate shutdown (SIGQUIT), then reaps the server. A backend forked
/// for a connection that arrives just then may sit out SIGQUIT until its
/// `authentication_timeout` (60 s), and the server waits for it: after
/// [`STOP_WITHIN`] the server and its children are killed.
fn stop(child: &mut Child) {
    use rustix::process::{Pid, Signal, kill_process};
    let pid = Pid::from_child(child);
    let _ = kill_process(pid, Signal::QUIT);
    let deadline = Instant::now() + STOP_WITHIN;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in crate::bench::children(child.id()) {
        if let Some(c) = Pid::from_raw(c as i32) {
            let _ = kill_process(c, Signal::KILL);
        }
    }
    let _ = kill_process(pid, Signal::KILL);
    let _ = child.wait();
}

/// How long an immediate shutdown may take before it is forced.
const STOP_WITHIN: Duration = Duration::from_secs(5);

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}
