//! The store on PostgreSQL, for coordinators that outgrow one SQLite file:
//! several replicas may share one database.
//!
//! - **Connections**: a small pool, connected on demand; a connection the
//!   server dropped is replaced on the next call, so a database that comes
//!   back is used again without a restart.
//! - **Writes that decide** (pins, rollout creation and transitions) hold
//!   one transaction-scoped advisory lock. Two replicas never interleave a
//!   membership check with a pin, and ledger and event ids become visible
//!   in the order they were assigned (a reader paging by id misses none).
//! - **Status and heartbeats** go through one writer that coalesces them per
//!   cluster and stores each batch with a single statement: thousands of
//!   reports cost one round trip, never one transaction each.
//! - **Schema**: versioned migrations in `ferry_schema`, each run in the
//!   transaction that records it (PostgreSQL's DDL is transactional, so one
//!   interrupted half-way leaves nothing behind), under an advisory lock so
//!   replicas starting together migrate once.
//! - **Replicas**: what one writes that the others must act on (assignments
//!   moved, sessions to end, sites) is NOTIFYed in the writing transaction;
//!   each replica LISTENs ([`Store::changes`]). Leases with fencing tokens,
//!   by the database's clock, decide which replica drives rollouts.
//! - **TLS**: required to a database off this machine, verified against the
//!   given CA or the system's ([`Options`]).

use super::{
    Advance, Change, ClusterRecord, Encoded, Error, Fence, Lease, MemberRow, PinChange,
    PinnedCluster, Result, RolloutRow, SiteRecord, Store, Summary, encoded, labels_json, labels_of,
    pin_of, pin_reason, refuse_overlap, rollout_number, rollout_of, site_of,
};
use ferry_proto::Commit;
use ferry_proto::ledger::{Event, LedgerEntry};
use ferry_proto::rollout::{ClusterProgress, Rollout, Spec, State};
use ferry_proto::v1::StatusReport;
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit, broadcast, mpsc, oneshot};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, GenericClient, NoTls, Notification, Row, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Connections a coordinator holds at most (the status writer's is extra).
const POOL: usize = 8;

/// Status reports and heartbeats one statement stores at most.
const BATCH: usize = 2048;

/// Batches of reports queued before callers wait for room.
const QUEUE: usize = 8192;

/// The advisory lock every deciding write holds (pins, rollouts).
const WRITE_LOCK: i64 = 0x6665_7272_7900;

/// The advisory lock migrations hold.
const MIGRATE_LOCK: i64 = 0x6665_7272_7901;

/// Where replicas say which clusters' assignments they changed, and which
/// clusters' sessions must end. A payload is the sending replica's id and
/// cluster names, one per line.
const ASSIGNMENTS: &str = "ferry_assignments";
const CLOSED: &str = "ferry_closed";
const SITES: &str = "ferry_sites";
const PREVIEW: &str = "ferry_preview";
const PREVIEW_ANSWERED: &str = "ferry_preview_answered";
const COMMAND: &str = "ferry_command";
const COMMAND_ANSWERED: &str = "ferry_command_answered";
const TOUCHED: &str = "ferry_touched";

/// A notification's payload must stay under PostgreSQL's 8000 bytes.
const PAYLOAD: usize = 7900;

/// Schema migrations, applied in order; the index + 1 is the version (in
/// `ferry_schema`). Never edit one that shipped: add another. Names sort
/// bytewise (`COLLATE "C"`), as in SQLite, so pages and orders agree.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE clusters (
    name TEXT COLLATE "C" PRIMARY KEY,
    labels TEXT NOT NULL DEFAULT '{}',
    path_override TEXT,
    agent_version TEXT NOT NULL DEFAULT '',
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    status BYTEA,
    revoked_ms BIGINT,
    identity_generation BIGINT NOT NULL DEFAULT 0,
    phase INTEGER NOT NULL DEFAULT 0,
    health INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE pins (
    cluster TEXT COLLATE "C" PRIMARY KEY REFERENCES clusters(name),
    commit_sha TEXT NOT NULL,
    generation BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    allow_mass_prune BOOLEAN NOT NULL DEFAULT false,
    rollout TEXT NOT NULL DEFAULT ''
);
CREATE TABLE ledger (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    cluster TEXT COLLATE "C" NOT NULL,
    from_commit TEXT NOT NULL,
    to_commit TEXT NOT NULL,
    reason TEXT NOT NULL,
    rollout TEXT NOT NULL DEFAULT ''
);
CREATE INDEX ledger_cluster ON ledger(cluster, id);
CREATE TABLE rollouts (
    id BIGSERIAL PRIMARY KEY,
    spec TEXT NOT NULL,
    active BOOLEAN NOT NULL,
    actor TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    phase TEXT NOT NULL,
    wave BIGINT NOT NULL,
    wave_started_ms BIGINT NOT NULL,
    baked_since_ms BIGINT NOT NULL,
    approved TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX rollouts_active ON rollouts(active);
CREATE TABLE rollout_clusters (
    rollout BIGINT NOT NULL REFERENCES rollouts(id),
    position BIGINT NOT NULL,
    cluster TEXT COLLATE "C" NOT NULL,
    wave BIGINT NOT NULL,
    previous TEXT NOT NULL DEFAULT '',
    phase TEXT NOT NULL,
    pinned_ms BIGINT NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout, cluster)
);
CREATE INDEX rollout_clusters_cluster ON rollout_clusters(cluster);
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    rollout TEXT NOT NULL,
    cluster TEXT NOT NULL,
    message TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX events_rollout ON events(rollout, id);
CREATE TABLE join_tokens (
    hash TEXT PRIMARY KEY,
    cluster TEXT COLLATE "C" NOT NULL REFERENCES clusters(name),
    expires_ms BIGINT NOT NULL,
    used_ms BIGINT
);
CREATE TABLE api_tokens (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE commit_signers (
    commit_sha TEXT PRIMARY KEY,
    signer TEXT NOT NULL,
    verified_ms BIGINT NOT NULL
);
CREATE TABLE sites (
    name TEXT COLLATE "C" PRIMARY KEY,
    mirror_url TEXT NOT NULL,
    selector TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    refs TEXT NOT NULL DEFAULT '{}',
    commits BIGINT NOT NULL DEFAULT 0,
    reported_ms BIGINT NOT NULL DEFAULT 0,
    reported_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE mirror_commits (
    site TEXT COLLATE "C" NOT NULL,
    commit_sha TEXT NOT NULL,
    PRIMARY KEY (commit_sha, site)
);
CREATE TABLE site_status (
    site TEXT COLLATE "C" PRIMARY KEY,
    exported_ms BIGINT NOT NULL,
    imported_ms BIGINT NOT NULL,
    encoded BYTEA NOT NULL
);
"#,
    // Leases: which replica drives rollouts, until when (by the database's
    // clock), with a token a takeover moves on.
    r#"
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
"#,
    // Answers to previews one replica relayed to the one holding the
    // cluster's session, until the asker takes them.
    r#"
CREATE TABLE preview_answers (
    id TEXT PRIMARY KEY,
    answer BYTEA NOT NULL,
    at_ms BIGINT NOT NULL
);
"#,
    // Room on every page for a row's next version: status reports and pins
    // rewrite these rows all the time, and an update that fits its page
    // touches no index (a HOT update). Which replica holds each cluster's
    // session, and which replicas are alive. Rollout commands a replica
    // that does not lead relays to the one that does, and their answers.
    r#"
ALTER TABLE clusters SET (fillfactor = 50);
ALTER TABLE pins SET (fillfactor = 70);
ALTER TABLE clusters ADD COLUMN session_replica TEXT;
ALTER TABLE clusters ADD COLUMN session_since_ms BIGINT;
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    alive_ms BIGINT NOT NULL
);
CREATE TABLE relayed_commands (
    id TEXT PRIMARY KEY,
    request BYTEA NOT NULL,
    asked_ms BIGINT NOT NULL,
    taken_by TEXT,
    answer BYTEA
);
"#,
];

/// The database's clock in Unix milliseconds: leases never depend on
/// replicas' clocks agreeing.
const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

fn db(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::Db {
        what: what.to_string(),
        source: Arc::new(e),
    }
}

/// How a coordinator reaches PostgreSQL.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// CA certificates (PEM) the server's certificate must chain to; the
    /// system's bundle when absent.
    pub ca: Option<std::path::PathBuf>,
    /// Allow plaintext to a server off this machine (`sslmode=disable`).
    pub insecure: bool,
}

/// The system's CA bundle (Debian's, as in the coordinator's image).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// TLS, as the DSN and `options` ask: required to any server off this
/// machine (plaintext only with `--insecure` and `sslmode=disable`),
/// verified against the given CA or the system's; on this machine (a Unix
/// socket, loopback) only when `sslmode=require` says so.
fn tls_for(
    config: &mut tokio_postgres::Config,
    options: &Options,
    target: &str,
) -> Result<Option<MakeRustlsConnect>> {
    let local = config.get_hosts().iter().all(|h| match h {
        Host::Unix(_) => true,
        Host::Tcp(h) => {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    });
    match config.get_ssl_mode() {
        SslMode::Disable if !local && !options.insecure => {
            return Err(Error::Config(format!(
                "refusing plaintext to PostgreSQL at {target}: TLS is required to a database off this machine (drop sslmode=disable), or pass --insecure"
            )));
        }
        SslMode::Disable => return Ok(None),
        SslMode::Prefer if local => return Ok(None),
        _ => {}
    }
    config.ssl_mode(SslMode::Require);
    let file = options.ca.clone().unwrap_or_else(|| SYSTEM_CAS.into());
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let unreadable = |e: &dyn std::fmt::Display| {
        Error::Config(format!(
            "reading CA certificates for PostgreSQL from {} (--store-ca): {e}",
            file.display()
        ))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&file).map_err(|e| unreadable(&e))? {
        roots
            .add(cert.map_err(|e| unreadable(&e))?)
            .map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no certificate in it"));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| unreadable(&e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(tls)))
}

/// Drives a connection: forwards its notifications (to whoever listens)
/// until the client is dropped or the server goes.
fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
) -> mpsc::UnboundedReceiver<Notification>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = tx.send(n);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "a PostgreSQL connection ended");
                    return;
                }
                None => return,
            }
        }
    });
    rx
}

/// Where a DSN points, without its password: `user@host:port/db`.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    format!(
        "{}@{}/{}",
        config.get_user().unwrap_or("?"),
        hosts.join(","),
        config.get_dbname().unwrap_or("?")
    )
}

/// Connections, opened on demand and put back unless broken.
struct Pool {
    config: tokio_postgres::Config,
    /// `None`: plaintext (a server on this machine, or `--insecure`).
    tls: Option<MakeRustlsConnect>,
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
    target: String,
}

/// A connection borrowed from the pool.
struct Conn<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("held until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && !c.is_closed()
        {
            self.pool.idle.lock().expect("pool lock").push(c);
        }
    }
}

impl Pool {
    /// A new connection, and its notifications.
    async fn open(
        &self,
    ) -> Result<(Client, mpsc::UnboundedReceiver<Notification>), tokio_postgres::Error> {
        Ok(match &self.tls {
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                (client, drive(connection))
            }
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                (client, drive(connection))
            }
        })
    }

    async fn connect(&self) -> Result<Client> {
        let (client, _) = self.open().await.map_err(|e| {
            // The whole chain: "error performing TLS handshake" alone does
            // not say that the certificate was not trusted.
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text = format!("{text}: {c}");
                cause = c.source();
            }
            Error::Db {
                what: format!("connecting to PostgreSQL at {}", self.target),
                source: Arc::new(std::io::Error::other(text)),
            }
        })?;
        Ok(client)
    }

    async fn get(&self) -> Result<Conn<'_>> {
        let permit = self.permits.acquire().await.map_err(|_| Error::Closed)?;
        let idle = {
            let mut idle = self.idle.lock().expect("pool lock");
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Conn {
            client: Some(client),
            pool: self,
            _permit: permit,
        })
    }
}

/// A status report or heartbeat on its way to the writer.
struct Beat {
    name: String,
    /// `None` for a heartbeat.
    status: Option<Encoded>,
    now_ms: i64,
    reply: oneshot::Sender<Result<()>>,
}

/// The PostgreSQL store; cheap to share (`Arc`).
pub struct Postgres {
    pool: Arc<Pool>,
    /// To the status writer: a report or heartbeat, or many at once.
    beats: mpsc::Sender<Vec<Beat>>,
    /// This coordinator's id among the replicas (its own notifications are
    /// not news to it).
    replica: String,
    changes: broadcast::Sender<Change>,
    /// Stops the follower when the store goes.
    _follower: DropGuard,
}

impl Postgres {
    /// Connects to `dsn` (`postgres://user:password@host:port/db` or
    /// `host=… user=… dbname=…`) and brings its schema up to date.
    pub async fn open(dsn: &str) -> Result<Postgres> {
        Self::open_with(dsn, &Options::default(), MIGRATIONS).await
    }

    /// As [`Postgres::open`], with other options (and, for tests staging
    /// broken ones, other migrations).
    pub async fn open_with(dsn: &str, options: &Options, migrations: &[&str]) -> Result<Postgres> {
        let mut config: tokio_postgres::Config = dsn.parse().map_err(|e| Error::Db {
            // The DSN itself is not shown: it may hold a password.
            what: "reading the PostgreSQL address given to --store (not shown: it may hold a password)"
                .into(),
            source: Arc::new(e),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("ferry");
        let target = describe(&config);
        let tls = tls_for(&mut config, options, &target)?;
        let pool = Arc::new(Pool {
            target,
            tls,
            config,
            idle: Mutex::new(vec![]),
            permits: Semaphore::new(POOL),
        });
        {
            let mut conn = pool.get().await?;
            migrate(&mut conn, migrations).await?;
        }
        static REPLICAS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let replica = format!(
            "{}.{}.{}",
            std::process::id(),
            ferry_proto::now_unix_ms(),
            REPLICAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (beats, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_beats(pool.clone(), replica.clone(), rx));
        let (changes, _) = broadcast::channel(1024);
        let stop = CancellationToken::new();
        tokio::spawn(follow(
            pool.clone(),
            replica.clone(),
            changes.clone(),
            stop.clone(),
        ));
        tokio::spawn(keep_alive(pool.clone(), replica.clone(), stop.clone()));
        Ok(Postgres {
            pool,
            beats,
            replica,
            changes,
            _follower: stop.drop_guard(),
        })
    }

    /// Where the store is (without its password).
    pub fn target(&self) -> &str {
        &self.pool.target
    }

    async fn conn(&self) -> Result<Conn<'_>> {
        self.pool.get().await
    }

    /// What `select` (no `WHERE` of its own, `c` the clusters) reads of
    /// each of `names` that exists, in name order.
    async fn named<T>(
        &self,
        select: &str,
        names: &[String],
        row: fn(&Row) -> T,
        what: &'static str,
    ) -> Result<Vec<T>> {
        let rows = self
            .conn()
            .await?
            .query(
                &format!("{select} WHERE c.name = ANY($1) ORDER BY c.name"),
                &[&names],
            )
            .await
            .map_err(db(what))?;
        Ok(rows.iter().map(row).collect())
    }

    /// Tells the other replicas that sites changed.
    async fn notify_sites(&self) -> Result<()> {
        self.conn()
            .await?
            .execute("SELECT pg_notify($1, $2)", &[&SITES, &self.replica])
            .await
            .map_err(db("notify the other coordinators"))?;
        Ok(())
    }

    async fn beat(&self, name: &str, status: Option<StatusReport>, now_ms: i64) -> Result<()> {
        let mut answers = self
            .beats_of(vec![(name.to_string(), status, now_ms)])
            .await;
        answers.pop().unwrap_or(Err(Error::Closed))
    }

    /// Hands reports and heartbeats to the writer together (stored in as
    /// few statements as the batch size allows) and waits for each answer.
    async fn beats_of(&self, beats: Vec<(String, Option<StatusReport>, i64)>) -> Vec<Result<()>> {
        let (batch, answers): (Vec<Beat>, Vec<_>) = beats
            .into_iter()
            .map(|(name, status, now_ms)| {
                let (reply, answer) = oneshot::channel();
                let status = status.map(encoded);
                let beat = Beat {
                    name,
                    status,
                    now_ms,
                    reply,
                };
                (beat, answer)
            })
            .unzip();
        if self.beats.send(batch).await.is_err() {
            return answers.iter().map(|_| Err(Error::Closed)).collect();
        }
        let mut out = Vec::with_capacity(answers.len());
        for a in answers {
            out.push(a.await.unwrap_or(Err(Error::Closed)));
        }
        out
    }
}

/// The payload naming one cluster whose state changed here.
fn touched(replica: &str, cluster: &str) -> String {
    format!("{replica}\n{cluster}")
}

/// Payloads naming `clusters`, each under PostgreSQL's limit.
fn payloads(replica: &str, clusters: &[&str]) -> Vec<String> {
    let mut out = vec![];
    let mut payload = replica.to_string();
    for c in clusters {
        if payload.len() + c.len() >= PAYLOAD {
            out.push(std::mem::replace(&mut payload, replica.to_string()));
        }
        payload.push('\n');
        payload.push_str(c);
    }
    if payload.len() > replica.len() {
        out.push(payload);
    }
    out
}

/// Tells the other replicas (at commit, when `c` is a transaction).
async fn notify(
    c: &impl GenericClient,
    replica: &str,
    channel: &str,
    clusters: &[&str],
) -> Result<()> {
    for payload in payloads(replica, clusters) {
        c.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
            .await
            .map_err(db("notify the other coordinators"))?;
    }
    Ok(())
}

/// Says every [`ALIVE_EVERY`] that this replica (and so the sessions it
/// holds) is alive, until the store goes; then says it is gone.
async fn keep_alive(pool: Arc<Pool>, replica: String, stop: CancellationToken) {
    let mut every = tokio::time::interval(ALIVE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        let said = async {
            pool.get()
                .await?
                .execute(
                    &format!(
                        "INSERT INTO replicas (id, alive_ms) VALUES ($1, {DB_NOW_MS})
                         ON CONFLICT (id) DO UPDATE SET alive_ms = EXCLUDED.alive_ms"
                    ),
                    &[&replica],
                )
                .await
                .map_err(db("say this coordinator is alive"))
        };
        if let Err(e) = said.await {
            tracing::debug!(error = %e, "saying this coordinator is alive");
        }
    }
    // Replicas gone for an hour are forgotten; this one at once.
    let gone = async {
        pool.get()
            .await?
            .execute(
                &format!("DELETE FROM replicas WHERE id = $1 OR alive_ms < {DB_NOW_MS} - 3600000"),
                &[&replica],
            )
            .await
            .map_err(db("say this coordinator is gone"))
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), gone).await;
}

/// Follows what the other replicas change, for as long as the store is
/// open; reconnects when the connection drops, and says `Resync` then
/// (what was notified meanwhile is lost).
async fn follow(
    pool: Arc<Pool>,
    replica: String,
    changes: broadcast::Sender<Change>,
    stop: CancellationToken,
) {
    let mut connected_before = false;
    loop {
        let listened = async {
            let (client, mut rx) = pool.open().await?;
            client
                .batch_execute(&format!(
                    "LISTEN {ASSIGNMENTS}; LISTEN {CLOSED}; LISTEN {SITES}; LISTEN {PREVIEW}; LISTEN {PREVIEW_ANSWERED}; LISTEN {COMMAND}; LISTEN {COMMAND_ANSWERED}; LISTEN {TOUCHED}"
                ))
                .await?;
            if connected_before {
                let _ = changes.send(Change::Resync);
            }
            connected_before = true;
            while let Some(n) = rx.recv().await {
                let mut lines = n.payload().lines();
                if lines.next() == Some(replica.as_str()) {
                    continue;
                }
                if n.channel() == PREVIEW {
                    use base64::Engine;
                    if let (Some(cluster), Some(Ok(request))) = (
                        lines.next(),
                        lines
                            .next()
                            .map(|b| base64::engine::general_purpose::STANDARD.decode(b)),
                    ) {
                        let _ = changes.send(Change::Preview {
                            cluster: cluster.to_string(),
                            request,
                        });
                    }
                    continue;
                }
                let names: Vec<String> = lines.map(str::to_string).collect();
                let _ = changes.send(match n.channel() {
                    CLOSED => Change::Closed(names),
                    SITES => Change::Sites,
                    PREVIEW_ANSWERED => {
                        Change::PreviewAnswered(names.into_iter().next().unwrap_or_default())
                    }
                    COMMAND => Change::Command(names.into_iter().next().unwrap_or_default()),
                    COMMAND_ANSWERED => {
                        Change::CommandAnswered(names.into_iter().next().unwrap_or_default())
                    }
                    TOUCHED => Change::Touched(names),
                    _ => Change::Assignments(names),
                });
            }
            drop(client);
            Ok::<_, tokio_postgres::Error>(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listened => if let Err(e) = r {
                tracing::warn!(error = %e, store = %pool.target, "following the other coordinators; retrying");
            },
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn migrate(client: &mut Client, migrations: &[&str]) -> Result<()> {
    let tx = client.transaction().await.map_err(db("migrate"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(db("migrate"))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS ferry_schema (version BIGINT NOT NULL)")
        .await
        .map_err(db("read schema version"))?;
    let version: i64 = match tx
        .query_opt("SELECT version FROM ferry_schema", &[])
        .await
        .map_err(db("read schema version"))?
    {
        Some(r) => r.get(0),
        None => {
            tx.execute("INSERT INTO ferry_schema (version) VALUES (0)", &[])
                .await
                .map_err(db("write schema version"))?;
            0
        }
    };
    let known = migrations.len() as i64;
    for (n, sql) in super::pending(version, migrations)? {
        tx.batch_execute(sql)
            .await
            .map_err(db(&format!("migration {n}")))?;
    }
    tx.execute("UPDATE ferry_schema SET version = $1", &[&known])
        .await
        .map_err(db("write schema version"))?;
    tx.commit().await.map_err(db("migrate"))
}

/// Stores queued reports and heartbeats, a batch per statement, coalesced
/// per cluster (the newest status and time win); answers each caller after
/// its batch is stored.
async fn write_beats(pool: Arc<Pool>, replica: String, mut rx: mpsc::Receiver<Vec<Beat>>) {
    const UPDATE: &str = "UPDATE clusters c SET
            last_seen_ms = GREATEST(c.last_seen_ms, u.ms),
            status = COALESCE(u.status, c.status),
            phase = COALESCE(u.phase, c.phase),
            health = COALESCE(u.health, c.health)
        FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::int[], $5::int[])
            AS u(name, status, ms, phase, health)
        WHERE c.name = u.name
        RETURNING c.name";
    let mut arrived: Vec<Vec<Beat>> = vec![];
    let mut waiting: std::collections::VecDeque<Beat> = Default::default();
    let mut queued = Vec::with_capacity(BATCH);
    let mut statement: Option<(Client, tokio_postgres::Statement)> = None;
    loop {
        if waiting.is_empty() {
            if rx.recv_many(&mut arrived, QUEUE).await == 0 {
                return;
            }
            waiting.extend(arrived.drain(..).flatten());
        }
        let n = waiting.len().min(BATCH);
        queued.extend(waiting.drain(..n));
        // Per cluster, in name order (concurrent writers, on other
        // replicas too, never wait on each other in a cycle): the newest
        // time, and the last status queued.
        let mut latest: BTreeMap<&str, (Option<&Encoded>, i64)> = BTreeMap::new();
        for b in &queued {
            let e = latest.entry(b.name.as_str()).or_insert((None, b.now_ms));
            e.1 = e.1.max(b.now_ms);
            if b.status.is_some() {
                e.0 = b.status.as_ref();
            }
        }
        let names: Vec<&str> = latest.keys().copied().collect();
        let statuses: Vec<Option<&[u8]>> = latest
            .values()
            .map(|(s, _)| s.map(|(b, _, _)| b.as_slice()))
            .collect();
        let times: Vec<i64> = latest.values().map(|(_, t)| *t).collect();
        let phases: Vec<Option<i32>> = latest.values().map(|(s, _)| s.map(|s| s.1)).collect();
        let healths: Vec<Option<i32>> = latest.values().map(|(s, _)| s.map(|s| s.2)).collect();
        let stored: Result<HashSet<String>> = async {
            if statement.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                let client = pool.connect().await?;
                let st = client.prepare(UPDATE).await.map_err(db("record status"))?;
                statement = Some((client, st));
            }
            let (client, st) = statement.as_ref().expect("just made");
            let rows = client
                .query(st, &[&names, &statuses, &times, &phases, &healths])
                .await
                .map_err(db("record status"))?;
            let found: HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
            // Rollouts on other replicas read these again (heartbeats
            // change nothing they look at).
            let reported: Vec<&str> = latest
                .iter()
                .filter(|(name, (status, _))| status.is_some() && found.contains(**name))
                .map(|(name, _)| *name)
                .collect();
            // Stored is stored: unnotified, the others' rollouts see it
            // on their next whole read.
            if let Err(e) = notify(client, &replica, TOUCHED, &reported).await {
                tracing::warn!(error = %e, "telling the other coordinators of stored reports");
            }
            Ok(found)
        }
        .await;
        for b in queued.drain(..) {
            let answer = match &stored {
                Ok(found) if found.contains(&b.name) || b.status.is_none() => Ok(()),
                Ok(_) => Err(Error::UnknownCluster(b.name)),
                Err(e) => Err(e.again()),
            };
            let _ = b.reply.send(answer);
        }
    }
}

const SELECT_CLUSTER: &str =
    "SELECT c.name, c.labels, c.path_override, c.agent_version, c.last_seen_ms, c.status,
        p.commit_sha, p.generation, p.allow_mass_prune, p.rollout,
        r.alive_ms > (extract(epoch from now()) * 1000)::bigint - 5000
     FROM clusters c LEFT JOIN pins p ON p.cluster = c.name
        LEFT JOIN replicas r ON r.id = c.session_replica";

/// How often a replica says it is alive; one silent for five times as
/// long (`SELECT_CLUSTER`'s 5000) is taken for dead, with its sessions.
const ALIVE_EVERY: Duration = Duration::from_secs(1);

fn cluster_row(r: &Row) -> ClusterRecord {
    let status: Option<&[u8]> = r.get(5);
    ClusterRecord {
        name: r.get(0),
        labels: labels_of(r.get(1)),
        path_override: r.get(2),
        agent_version: r.get(3),
        last_seen_ms: r.get(4),
        status: status.and_then(|b| StatusReport::decode(b).ok()),
        pin: pin_of(r.get(6), r.get(7)),
        allow_mass_prune: r.get::<_, Option<bool>>(8).unwrap_or(false),
        pin_rollout: r.get::<_, Option<String>>(9).filter(|s| !s.is_empty()),
        live_session: r.get::<_, Option<bool>>(10).unwrap_or(false),
    }
}

const SELECT_PINNED: &str = "SELECT c.name, c.labels, c.path_override, p.commit_sha, p.generation, p.allow_mass_prune, p.rollout
     FROM clusters c LEFT JOIN pins p ON p.cluster = c.name";

fn pinned_row(r: &Row) -> PinnedCluster {
    PinnedCluster {
        name: r.get(0),
        labels: labels_of(r.get(1)),
        path_override: r.get(2),
        pin: pin_of(r.get(3), r.get(4)),
        allow_mass_prune: r.get::<_, Option<bool>>(5).unwrap_or(false),
        pin_rollout: r.get::<_, Option<String>>(6).filter(|s| !s.is_empty()),
    }
}

fn ledger_row(r: &Row) -> Result<LedgerEntry> {
    let from: String = r.get(4);
    let to: String = r.get(5);
    let rollout: String = r.get(7);
    let id: i64 = r.get(0);
    Ok(LedgerEntry {
        id,
        at_ms: r.get(1),
        actor: r.get(2),
        cluster: r.get(3),
        from: Commit::parse(&from).ok(),
        to: Commit::parse(&to).map_err(|e| super::corrupt(&format!("ledger entry {id}"), e))?,
        reason: r.get(6),
        rollout: (!rollout.is_empty()).then_some(rollout),
        signer: r.get(8),
    })
}

const SITE_COLUMNS: &str =
    "SELECT name, mirror_url, selector, refs, commits, reported_ms, reported_by FROM sites";

fn site_row(r: &Row) -> Result<SiteRecord> {
    site_of(
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
    )
}

async fn site_named(c: &impl GenericClient, name: &str) -> Result<Option<SiteRecord>> {
    c.query_opt(&format!("{SITE_COLUMNS} WHERE name = $1"), &[&name])
        .await
        .map_err(db("read a site"))?
        .map(|r| site_row(&r))
        .transpose()
}

/// Whether a cluster may be served to a certificate of `generation`
/// (`None`: no check, dev mode); returns the cluster's current generation.
async fn check_identity(
    c: &impl GenericClient,
    name: &str,
    generation: Option<i64>,
) -> Result<i64> {
    let row = c
        .query_opt(
            "SELECT revoked_ms, identity_generation FROM clusters WHERE name = $1",
            &[&name],
        )
        .await
        .map_err(db("read a cluster's identity"))?;
    let stored = row.map(|r| (r.get(0), r.get(1)));
    super::identity_verdict(name, stored, generation)
}

/// The active rollout (if any) of each of `clusters`.
async fn active_rollouts_of(
    tx: &Transaction<'_>,
    clusters: &[&str],
) -> Result<BTreeMap<String, String>> {
    let rows = tx
        .query(
            "SELECT rc.cluster, r.id FROM rollout_clusters rc JOIN rollouts r ON r.id = rc.rollout
             WHERE r.active AND rc.cluster = ANY($1) ORDER BY r.id",
            &[&clusters],
        )
        .await
        .map_err(db("read rollout membership"))?;
    let mut found = BTreeMap::new();
    for r in rows {
        let id: i64 = r.get(1);
        found.entry(r.get(0)).or_insert_with(|| format!("r{id}"));
    }
    Ok(found)
}

/// Refuses to go on unless `fence` still holds its lease; the lease row
/// stays locked until the transaction ends, so no takeover lands between
/// this check and the commit.
async fn check_fence(tx: &Transaction<'_>, fence: &Fence) -> Result<()> {
    let held = tx
        .query_opt(
            &format!(
                "SELECT 1 FROM leases WHERE name = $1 AND holder = $2 AND token = $3
                 AND expires_ms > {DB_NOW_MS} FOR SHARE"
            ),
            &[&fence.lease, &fence.holder, &fence.token],
        )
        .await
        .map_err(db("check a lease"))?;
    match held {
        Some(_) => Ok(()),
        None => Err(Error::Fenced {
            lease: fence.lease.clone(),
            holder: fence.holder.clone(),
        }),
    }
}

/// Takes the lock every deciding write holds until its transaction ends.
async fn lock_writes(tx: &Transaction<'_>, what: &str) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await
        .map_err(db(what))?;
    Ok(())
}

/// The pin logic, inside a caller's transaction holding the write lock.
async fn pin_in(tx: &Transaction<'_>, change: &PinChange, now_ms: i64) -> Result<Vec<LedgerEntry>> {
    let mut seen = HashSet::new();
    let clusters: Vec<&str> = change
        .clusters
        .iter()
        .map(String::as_str)
        .filter(|c| seen.insert(*c))
        .collect();
    let inside = match change.rollout {
        None => Some(active_rollouts_of(tx, &clusters).await?),
        Some(_) => None,
    };
    let reason = pin_reason(change, inside.as_ref())?;
    let rows = tx
        .query(
            "SELECT c.name, p.commit_sha, p.generation, p.allow_mass_prune
             FROM clusters c LEFT JOIN pins p ON p.cluster = c.name WHERE c.name = ANY($1)",
            &[&clusters],
        )
        .await
        .map_err(db("pin"))?;
    // name -> (pinned commit, generation, mass prune allowed), if pinned.
    type Current = (Option<String>, Option<i64>, Option<bool>);
    let current: HashMap<String, Current> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let (mut moved, mut froms) = (vec![], vec![]);
    // First pins are inserted, the others updated: the write lock keeps
    // other pins out, and neither pays for an upsert's conflict checks.
    let (mut first, mut again, mut generations) = (vec![], vec![], vec![]);
    for c in &clusters {
        let Some((from, generation, allowed)) = current.get(*c) else {
            return Err(Error::UnknownCluster(c.to_string()));
        };
        let from = from.clone().unwrap_or_default();
        // The same commit with the same options changes nothing.
        if from == change.commit.as_str() && allowed.unwrap_or(false) == change.allow_mass_prune {
            continue;
        }
        moved.push(*c);
        froms.push(from);
        match generation {
            None => first.push(*c),
            Some(g) => {
                again.push(*c);
                generations.push(g + 1);
            }
        }
    }
    if moved.is_empty() {
        return Ok(vec![]);
    }
    let rollout = change.rollout.clone().unwrap_or_default();
    if !first.is_empty() {
        tx.execute(
            "INSERT INTO pins (cluster, commit_sha, generation, updated_ms, allow_mass_prune, rollout)
             SELECT u.cluster, $1, 1, $2, $3, $4 FROM unnest($5::text[]) AS u(cluster)",
            &[
                &change.commit.as_str(),
                &now_ms,
                &change.allow_mass_prune,
                &rollout,
                &first,
            ],
        )
        .await
        .map_err(db("pin"))?;
    }
    if !again.is_empty() {
        tx.execute(
            "UPDATE pins p SET commit_sha = $1, generation = u.generation, updated_ms = $2,
                 allow_mass_prune = $3, rollout = $4
             FROM unnest($5::text[], $6::bigint[]) AS u(cluster, generation)
             WHERE p.cluster = u.cluster",
            &[
                &change.commit.as_str(),
                &now_ms,
                &change.allow_mass_prune,
                &rollout,
                &again,
                &generations,
            ],
        )
        .await
        .map_err(db("pin"))?;
    }
    let ids = tx
        .query(
            "INSERT INTO ledger (at_ms, actor, cluster, from_commit, to_commit, reason, rollout)
             SELECT $1, $2, u.cluster, u.from_commit, $3, $4, $5
             FROM unnest($6::text[], $7::text[]) WITH ORDINALITY AS u(cluster, from_commit, n) ORDER BY u.n
             RETURNING id, cluster",
            &[
                &now_ms,
                &change.actor,
                &change.commit.as_str(),
                &reason,
                &rollout,
                &moved,
                &froms,
            ],
        )
        .await
        .map_err(db("append to the ledger"))?;
    let ids: HashMap<String, i64> = ids.iter().map(|r| (r.get(1), r.get(0))).collect();
    Ok(moved
        .iter()
        .zip(froms)
        .map(|(cluster, from)| LedgerEntry {
            id: ids.get(*cluster).copied().unwrap_or_default(),
            at_ms: now_ms,
            actor: change.actor.clone(),
            cluster: cluster.to_string(),
            from: Commit::parse(&from).ok(),
            to: change.commit.clone(),
            reason: reason.clone(),
            rollout: change.rollout.clone(),
            signer: None,
        })
        .collect())
}

/// Writes rollout members (new ones at `first_position` on; an existing
/// member keeps its position and wave).
async fn write_members(
    tx: &Transaction<'_>,
    rollout: i64,
    members: &[ClusterProgress],
    first_position: Option<i64>,
) -> Result<()> {
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let positions: Vec<i64> = (0..members.len() as i64)
        .map(|i| first_position.map_or(0, |p| p + i))
        .collect();
    let waves: Vec<i64> = members.iter().map(|m| m.wave as i64).collect();
    let previous: Vec<&str> = members
        .iter()
        .map(|m| m.previous.as_ref().map_or("", Commit::as_str))
        .collect();
    let phases: Vec<&str> = members.iter().map(|m| m.phase.as_str()).collect();
    let pinned: Vec<i64> = members.iter().map(|m| m.pinned_ms).collect();
    let reasons: Vec<&str> = members.iter().map(|m| m.reason.as_str()).collect();
    tx.execute(
        "INSERT INTO rollout_clusters (rollout, position, cluster, wave, previous, phase, pinned_ms, reason)
         SELECT $1, u.* FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::bigint[], $8::text[])
             AS u(position, cluster, wave, previous, phase, pinned_ms, reason)
         ON CONFLICT (rollout, cluster) DO UPDATE SET phase = EXCLUDED.phase,
             pinned_ms = EXCLUDED.pinned_ms, reason = EXCLUDED.reason",
        &[
            &rollout, &positions, &names, &waves, &previous, &phases, &pinned, &reasons,
        ],
    )
    .await
    .map_err(db("write rollout membership"))?;
    Ok(())
}

const SELECT_ROLLOUT: &str = "SELECT id, spec, phase, wave, wave_started_ms, baked_since_ms, approved, message, actor, created_ms, updated_ms FROM rollouts";

/// Reads rollouts (their rows, then all their members at once).
async fn read_rollouts(
    c: &impl GenericClient,
    filter: &str,
    args: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Rollout>> {
    let rows = c
        .query(&format!("{SELECT_ROLLOUT} {filter}"), args)
        .await
        .map_err(db("read rollouts"))?;
    let numbers: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let member_rows = c
        .query(
            "SELECT rollout, cluster, wave, previous, phase, pinned_ms, reason FROM rollout_clusters
             WHERE rollout = ANY($1) ORDER BY rollout, position",
            &[&numbers],
        )
        .await
        .map_err(db("read rollout membership"))?;
    let mut members: HashMap<i64, Vec<MemberRow>> = HashMap::new();
    for r in member_rows {
        members.entry(r.get(0)).or_default().push(MemberRow {
            name: r.get(1),
            wave: r.get(2),
            previous: r.get(3),
            phase: r.get(4),
            pinned_ms: r.get(5),
            reason: r.get(6),
        });
    }
    rows.iter()
        .map(|r| {
            let number: i64 = r.get(0);
            rollout_of(
                RolloutRow {
                    number,
                    spec: r.get(1),
                    phase: r.get(2),
                    wave: r.get(3),
                    wave_started_ms: r.get(4),
                    baked_since_ms: r.get(5),
                    approved: r.get(6),
                    message: r.get(7),
                    actor: r.get(8),
                    created_ms: r.get(9),
                    updated_ms: r.get(10),
                },
                members.remove(&number).unwrap_or_default(),
            )
        })
        .collect()
}

#[tonic::async_trait]
impl Store for Postgres {
    async fn hello(
        &self,
        name: &str,
        certificate_generation: Option<i64>,
        declared: Option<BTreeMap<String, String>>,
        agent_version: &str,
        status: Option<StatusReport>,
        now_ms: i64,
    ) -> Result<()> {
        let (phase, health) = status
            .as_ref()
            .map_or((None, None), |s| (Some(s.phase), Some(s.health)));
        let status = status.map(|s| s.encode_to_vec());
        let conn = self.conn().await?;
        if let Some(labels) = declared {
            conn.execute(
                "WITH u AS (INSERT INTO clusters (name, labels, agent_version, first_seen_ms, last_seen_ms, status, phase, health,
                     session_replica, session_since_ms)
                 VALUES ($1, $2, $3, $4, $4, $5, COALESCE($6, 0), COALESCE($7, 0), $8, $4)
                 ON CONFLICT (name) DO UPDATE SET labels = $2, agent_version = $3, last_seen_ms = $4,
                     status = COALESCE($5, clusters.status), phase = COALESCE($6, clusters.phase),
                     health = COALESCE($7, clusters.health), session_replica = $8, session_since_ms = $4
                 RETURNING name)
                 SELECT pg_notify($9, $10) FROM u",
                &[&name, &labels_json(&labels), &agent_version, &now_ms, &status, &phase, &health, &self.replica,
                    &TOUCHED, &touched(&self.replica, name)],
            )
            .await
            .map_err(db("record hello"))?;
            return Ok(());
        }
        // Checked and written in one statement: a revocation on another
        // replica cannot fall between the check and the write.
        // Other replicas hear of the session (and its status) at commit.
        let n = conn
            .execute(
                "WITH u AS (UPDATE clusters SET agent_version = $2, last_seen_ms = $3, status = COALESCE($4, status),
                     phase = COALESCE($5, phase), health = COALESCE($6, health),
                     session_replica = $8, session_since_ms = $3
                 WHERE name = $1 AND revoked_ms IS NULL
                     AND ($7::bigint IS NULL OR identity_generation = $7)
                 RETURNING name)
                 SELECT pg_notify($9, $10) FROM u",
                &[&name, &agent_version, &now_ms, &status, &phase, &health, &certificate_generation, &self.replica,
                    &TOUCHED, &touched(&self.replica, name)],
            )
            .await
            .map_err(db("record hello"))?;
        if n == 0 {
            check_identity(&*conn, name, certificate_generation).await?;
        }
        Ok(())
    }

    async fn session_ended(&self, name: &str, hello_ms: i64) -> Result<()> {
        self.conn()
            .await?
            .execute(
                "WITH u AS (UPDATE clusters SET session_replica = NULL, session_since_ms = NULL
                 WHERE name = $1 AND session_replica = $2 AND session_since_ms = $3 RETURNING name)
                 SELECT pg_notify($4, $5) FROM u",
                &[
                    &name,
                    &self.replica,
                    &hello_ms,
                    &TOUCHED,
                    &touched(&self.replica, name),
                ],
            )
            .await
            .map_err(db("record a session's end"))?;
        Ok(())
    }

    async fn add_cluster(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        token_hash: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db("add a cluster"))?;
        // A new cluster starts at generation 1; adding one again moves it
        // on, so every certificate issued before is refused.
        tx.execute(
            "INSERT INTO clusters (name, labels, first_seen_ms, last_seen_ms, identity_generation)
             VALUES ($1, $2, $3, 0, 1)
             ON CONFLICT (name) DO UPDATE SET labels = $2, revoked_ms = NULL,
                 identity_generation = clusters.identity_generation + 1",
            &[&name, &labels_json(&labels), &now_ms],
        )
        .await
        .map_err(db("add a cluster"))?;
        tx.execute(
            "INSERT INTO join_tokens (hash, cluster, expires_ms) VALUES ($1, $2, $3)",
            &[&token_hash, &name, &expires_ms],
        )
        .await
        .map_err(db("store a join token"))?;
        notify(&tx, &self.replica, CLOSED, &[name]).await?;
        tx.commit().await.map_err(db("add a cluster"))
    }

    async fn redeem(&self, token_hash: &str, now_ms: i64) -> Result<(String, i64)> {
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(db("redeem a join token"))?;
        let row = tx
            .query_opt(
                "SELECT t.cluster, t.expires_ms, t.used_ms, c.revoked_ms, c.identity_generation
                 FROM join_tokens t JOIN clusters c ON c.name = t.cluster WHERE t.hash = $1
                 FOR UPDATE OF t",
                &[&token_hash],
            )
            .await
            .map_err(db("redeem a join token"))?
            .ok_or(Error::JoinToken("unknown"))?;
        let (cluster, expires, used, revoked, generation): (
            String,
            i64,
            Option<i64>,
            Option<i64>,
            i64,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        super::redeemable(&cluster, expires, used, revoked, now_ms)?;
        tx.execute(
            "UPDATE join_tokens SET used_ms = $2 WHERE hash = $1",
            &[&token_hash, &now_ms],
        )
        .await
        .map_err(db("redeem a join token"))?;
        tx.commit().await.map_err(db("redeem a join token"))?;
        Ok((cluster, generation))
    }

    async fn revoke(&self, name: &str, now_ms: i64) -> Result<()> {
        let n = self
            .conn()
            .await?
            .execute(
                "UPDATE clusters SET revoked_ms = $2, identity_generation = identity_generation + 1
                 WHERE name = $1",
                &[&name, &now_ms],
            )
            .await
            .map_err(db("revoke a cluster"))?;
        if n == 0 {
            return Err(Error::UnknownCluster(name.to_string()));
        }
        notify(&*self.conn().await?, &self.replica, CLOSED, &[name]).await
    }

    async fn check_certificate(&self, name: &str, generation: Option<i64>) -> Result<i64> {
        check_identity(&*self.conn().await?, name, generation).await
    }

    async fn create_token(&self, hash: &str, name: &str, role: &str, now_ms: i64) -> Result<()> {
        self.conn()
            .await?
            .execute(
                "INSERT INTO api_tokens (hash, name, role, created_ms) VALUES ($1, $2, $3, $4)",
                &[&hash, &name, &role, &now_ms],
            )
            .await
            .map_err(db("store a token"))?;
        Ok(())
    }

    async fn token(&self, hash: &str) -> Result<Option<(String, String)>> {
        Ok(self
            .conn()
            .await?
            .query_opt(
                "SELECT name, role FROM api_tokens WHERE hash = $1",
                &[&hash],
            )
            .await
            .map_err(db("read a token"))?
            .map(|r| (r.get(0), r.get(1))))
    }

    async fn token_count(&self) -> Result<i64> {
        Ok(self
            .conn()
            .await?
            .query_one("SELECT COUNT(*) FROM api_tokens", &[])
            .await
            .map_err(db("count tokens"))?
            .get(0))
    }

    async fn report(&self, name: &str, status: StatusReport, now_ms: i64) -> Result<()> {
        self.beat(name, Some(status), now_ms).await
    }

    async fn seen(&self, name: &str, now_ms: i64) -> Result<()> {
        self.beat(name, None, now_ms).await
    }

    async fn report_many(
        &self,
        beats: Vec<(String, Option<StatusReport>, i64)>,
    ) -> Vec<Result<()>> {
        self.beats_of(beats).await
    }

    async fn set_path_override(&self, name: &str, path: Option<String>) -> Result<()> {
        let n = self
            .conn()
            .await?
            .execute(
                "UPDATE clusters SET path_override = $2 WHERE name = $1",
                &[&name, &path],
            )
            .await
            .map_err(db("set path"))?;
        if n == 0 {
            return Err(Error::UnknownCluster(name.to_string()));
        }
        notify(&*self.conn().await?, &self.replica, ASSIGNMENTS, &[name]).await
    }

    async fn clusters(&self) -> Result<Vec<ClusterRecord>> {
        let rows = self
            .conn()
            .await?
            .query(&format!("{SELECT_CLUSTER} ORDER BY c.name"), &[])
            .await
            .map_err(db("list clusters"))?;
        Ok(rows.iter().map(cluster_row).collect())
    }

    async fn cluster_labels(&self) -> Result<Vec<(String, BTreeMap<String, String>)>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT name, labels FROM clusters WHERE revoked_ms IS NULL ORDER BY name",
                &[],
            )
            .await
            .map_err(db("read cluster labels"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), labels_of(r.get(1))))
            .collect())
    }

    async fn clusters_page(&self, after: &str, limit: u32) -> Result<Vec<ClusterRecord>> {
        let rows = self
            .conn()
            .await?
            .query(
                &format!("{SELECT_CLUSTER} WHERE c.name > $1 ORDER BY c.name LIMIT $2"),
                &[&after, &(limit as i64)],
            )
            .await
            .map_err(db("list clusters"))?;
        Ok(rows.iter().map(cluster_row).collect())
    }

    async fn cluster(&self, name: &str) -> Result<Option<ClusterRecord>> {
        Ok(self
            .conn()
            .await?
            .query_opt(&format!("{SELECT_CLUSTER} WHERE c.name = $1"), &[&name])
            .await
            .map_err(db("read cluster"))?
            .map(|r| cluster_row(&r)))
    }

    async fn clusters_named(&self, names: Vec<String>) -> Result<Vec<ClusterRecord>> {
        self.named(SELECT_CLUSTER, &names, cluster_row, "read clusters")
            .await
    }

    async fn pinned(&self, clusters: Vec<String>) -> Result<Vec<PinnedCluster>> {
        self.named(SELECT_PINNED, &clusters, pinned_row, "read pins")
            .await
    }

    async fn pin(&self, change: PinChange, now_ms: i64) -> Result<Vec<LedgerEntry>> {
        let t = std::time::Instant::now();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db("pin"))?;
        lock_writes(&tx, "pin").await?;
        let locked = t.elapsed();
        let entries = pin_in(&tx, &change, now_ms).await?;
        let written = t.elapsed();
        let moved: Vec<&str> = entries.iter().map(|e| e.cluster.as_str()).collect();
        notify(&tx, &self.replica, ASSIGNMENTS, &moved).await?;
        let notified = t.elapsed();
        tx.commit().await.map_err(db("pin"))?;
        tracing::debug!(
            clusters = entries.len(),
            lock_ms = locked.as_millis() as u64,
            write_ms = (written - locked).as_millis() as u64,
            notify_ms = (notified - written).as_millis() as u64,
            commit_ms = (t.elapsed() - notified).as_millis() as u64,
            "pin stored"
        );
        Ok(entries)
    }

    async fn history(&self, cluster: Option<&str>, limit: u32) -> Result<Vec<LedgerEntry>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT l.id, l.at_ms, l.actor, l.cluster, l.from_commit, l.to_commit, l.reason, l.rollout, s.signer
                 FROM ledger l LEFT JOIN commit_signers s ON s.commit_sha = l.to_commit
                 WHERE $1::text IS NULL OR l.cluster = $1 ORDER BY l.id DESC LIMIT $2",
                &[&cluster, &(limit as i64)],
            )
            .await
            .map_err(db("read the ledger"))?;
        rows.iter().map(ledger_row).collect()
    }

    async fn create_rollout(
        &self,
        spec: Spec,
        state: State,
        actor: &str,
        now_ms: i64,
    ) -> Result<Rollout> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db("create a rollout"))?;
        lock_writes(&tx, "create a rollout").await?;
        let names: Vec<&str> = state.clusters.iter().map(|c| c.name.as_str()).collect();
        refuse_overlap(&state, &active_rollouts_of(&tx, &names).await?)?;
        let n: i64 = tx
            .query_one(
                "INSERT INTO rollouts (spec, active, actor, created_ms, updated_ms, phase, wave,
                     wave_started_ms, baked_since_ms, approved, message)
                 VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
                &[
                    &serde_json::to_string(&spec).expect("specs serialize"),
                    &state.phase.is_active(),
                    &actor,
                    &now_ms,
                    &state.phase.as_str(),
                    &(state.wave as i64),
                    &state.wave_started_ms,
                    &state.baked_since_ms,
                    &serde_json::to_string(&state.approved).expect("sets serialize"),
                    &state.message,
                ],
            )
            .await
            .map_err(db("create a rollout"))?
            .get(0);
        write_members(&tx, n, &state.clusters, Some(0)).await?;
        tx.commit().await.map_err(db("create a rollout"))?;
        Ok(Rollout {
            id: format!("r{n}"),
            spec,
            state,
            actor: actor.to_string(),
            created_ms: now_ms,
            updated_ms: now_ms,
        })
    }

    async fn rollouts(&self, active_only: bool) -> Result<Vec<Rollout>> {
        read_rollouts(
            &*self.conn().await?,
            "WHERE active OR NOT $1 ORDER BY id DESC",
            &[&active_only],
        )
        .await
    }

    async fn rollout(&self, id: &str) -> Result<Rollout> {
        let n = rollout_number(id)?;
        read_rollouts(&*self.conn().await?, "WHERE id = $1", &[&n])
            .await?
            .pop()
            .ok_or_else(|| Error::UnknownRollout(id.to_string()))
    }

    async fn advance(&self, step: Advance, now_ms: i64) -> Result<(Vec<LedgerEntry>, Vec<Event>)> {
        let n = rollout_number(&step.id)?;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db("advance a rollout"))?;
        lock_writes(&tx, "advance a rollout").await?;
        if let Some(fence) = &step.fence {
            check_fence(&tx, fence).await?;
        }
        // Pins of one commit for one reason are one change (a wave's pins
        // are a few statements, not a few per cluster).
        let mut groups: Vec<((&Commit, &str), Vec<String>)> = vec![];
        for (cluster, commit, reason) in &step.pins {
            match groups
                .iter_mut()
                .find(|((c, r), _)| *c == commit && *r == reason.as_str())
            {
                Some((_, names)) => names.push(cluster.clone()),
                None => groups.push(((commit, reason.as_str()), vec![cluster.clone()])),
            }
        }
        let mut entries = vec![];
        for ((commit, reason), clusters) in groups {
            entries.extend(
                pin_in(
                    &tx,
                    &PinChange {
                        clusters,
                        commit: commit.clone(),
                        actor: step.actor.clone(),
                        reason: reason.to_string(),
                        rollout: Some(step.id.clone()),
                        force: false,
                        allow_mass_prune: false,
                    },
                    now_ms,
                )
                .await?,
            );
        }
        let (clusters, messages): (Vec<&str>, Vec<&str>) = step
            .events
            .iter()
            .map(|(c, m)| (c.as_str(), m.as_str()))
            .unzip();
        let ids = tx
            .query(
                "INSERT INTO events (at_ms, rollout, cluster, message, actor)
                 SELECT $1, $2, u.cluster, u.message, $3
                 FROM unnest($4::text[], $5::text[]) WITH ORDINALITY AS u(cluster, message, n) ORDER BY u.n
                 RETURNING id",
                &[&now_ms, &step.id, &step.actor, &clusters, &messages],
            )
            .await
            .map_err(db("record an event"))?;
        let mut ids: Vec<i64> = ids.iter().map(|r| r.get(0)).collect();
        ids.sort_unstable();
        let events = ids
            .into_iter()
            .zip(&step.events)
            .map(|(id, (cluster, message))| Event {
                id,
                at_ms: now_ms,
                rollout: step.id.clone(),
                cluster: cluster.clone(),
                message: message.clone(),
                actor: step.actor.clone(),
            })
            .collect();
        let s = &step.state;
        let updated = tx
            .execute(
                "UPDATE rollouts SET phase = $2, active = $3, wave = $4, wave_started_ms = $5,
                     baked_since_ms = $6, approved = $7, message = $8, updated_ms = $9
                 WHERE id = $1",
                &[
                    &n,
                    &s.phase.as_str(),
                    &s.phase.is_active(),
                    &(s.wave as i64),
                    &s.wave_started_ms,
                    &s.baked_since_ms,
                    &serde_json::to_string(&s.approved).expect("sets serialize"),
                    &s.message,
                    &now_ms,
                ],
            )
            .await
            .map_err(db("advance a rollout"))?;
        if updated == 0 {
            return Err(Error::UnknownRollout(step.id.clone()));
        }
        write_members(&tx, n, &step.changed, None).await?;
        let moved: Vec<&str> = entries.iter().map(|e| e.cluster.as_str()).collect();
        notify(&tx, &self.replica, ASSIGNMENTS, &moved).await?;
        tx.commit().await.map_err(db("advance a rollout"))?;
        Ok((entries, events))
    }

    async fn events(&self, rollout: Option<&str>, after_id: i64, limit: u32) -> Result<Vec<Event>> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT id, at_ms, rollout, cluster, message, actor FROM events
                 WHERE id > $1 AND ($2::text IS NULL OR rollout = $2) ORDER BY id LIMIT $3",
                &[&after_id, &rollout, &(limit as i64)],
            )
            .await
            .map_err(db("read events"))?;
        Ok(rows
            .iter()
            .map(|r| Event {
                id: r.get(0),
                at_ms: r.get(1),
                rollout: r.get(2),
                cluster: r.get(3),
                message: r.get(4),
                actor: r.get(5),
            })
            .collect())
    }

    async fn record_signer(&self, commit: &Commit, signer: &str, now_ms: i64) -> Result<()> {
        self.conn()
            .await?
            .execute(
                "INSERT INTO commit_signers (commit_sha, signer, verified_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (commit_sha) DO UPDATE SET signer = $2, verified_ms = $3",
                &[&commit.as_str(), &signer, &now_ms],
            )
            .await
            .map_err(db("record a signer"))?;
        Ok(())
    }

    async fn add_site(&self, site: SiteRecord, now_ms: i64) -> Result<()> {
        let added = self
            .conn()
            .await?
            .execute(
                "INSERT INTO sites (name, mirror_url, selector, created_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING",
                &[&site.name, &site.mirror_url, &site.selector, &now_ms],
            )
            .await
            .map_err(db("add a site"))?;
        if added == 0 {
            return Err(Error::SiteExists(site.name));
        }
        self.notify_sites().await
    }

    async fn remove_site(&self, name: &str) -> Result<SiteRecord> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db("remove a site"))?;
        let site = site_named(&tx, name)
            .await?
            .ok_or_else(|| Error::UnknownSite(name.to_string()))?;
        for sql in [
            "DELETE FROM mirror_commits WHERE site = $1",
            "DELETE FROM site_status WHERE site = $1",
            "DELETE FROM sites WHERE name = $1",
        ] {
            tx.execute(sql, &[&name])
                .await
                .map_err(db("remove a site"))?;
        }
        tx.commit().await.map_err(db("remove a site"))?;
        self.notify_sites().await?;
        Ok(site)
    }

    async fn sites(&self) -> Result<Vec<SiteRecord>> {
        self.conn()
            .await?
            .query(&format!("{SITE_COLUMNS} ORDER BY name"), &[])
            .await
            .map_err(db("read sites"))?
            .iter()
            .map(site_row)
            .collect()
    }

    async fn report_mirror(
        &self,
        site: &str,
        refs: BTreeMap<String, String>,
        commits: Vec<String>,
        how: &str,
        now_ms: i64,
    ) -> Result<SiteRecord> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db("record a mirror"))?;
        let refs_json = serde_json::to_string(&refs).expect("a map serializes");
        let n = tx
            .execute(
                "UPDATE sites SET refs = $2, commits = $3, reported_ms = $4, reported_by = $5 WHERE name = $1",
                &[&site, &refs_json, &(commits.len() as i64), &now_ms, &how],
            )
            .await
            .map_err(db("record a mirror"))?;
        if n == 0 {
            return Err(Error::UnknownSite(site.to_string()));
        }
        tx.execute("DELETE FROM mirror_commits WHERE site = $1", &[&site])
            .await
            .map_err(db("record a mirror"))?;
        tx.execute(
            "INSERT INTO mirror_commits (commit_sha, site) SELECT c, $2 FROM unnest($1::text[]) AS c
             ON CONFLICT DO NOTHING",
            &[&commits, &site],
        )
        .await
        .map_err(db("record a mirror"))?;
        let record = site_named(&tx, site)
            .await?
            .ok_or_else(|| Error::UnknownSite(site.to_string()))?;
        tx.commit().await.map_err(db("record a mirror"))?;
        Ok(record)
    }

    async fn sites_holding(&self, commit: &Commit) -> Result<Vec<String>> {
        Ok(self
            .conn()
            .await?
            .query(
                "SELECT site FROM mirror_commits WHERE commit_sha = $1 ORDER BY site",
                &[&commit.as_str()],
            )
            .await
            .map_err(db("read mirrors"))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn import_site_status(
        &self,
        site: &str,
        exported_ms: i64,
        encoded: Vec<u8>,
        now_ms: i64,
    ) -> Result<bool> {
        let conn = self.conn().await?;
        if site_named(&*conn, site).await?.is_none() {
            return Err(Error::UnknownSite(site.to_string()));
        }
        let n = conn
            .execute(
                "INSERT INTO site_status (site, exported_ms, imported_ms, encoded) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (site) DO UPDATE SET exported_ms = $2, imported_ms = $3, encoded = $4
                 WHERE site_status.exported_ms < $2",
                &[&site, &exported_ms, &now_ms, &encoded],
            )
            .await
            .map_err(db("import a site's status"))?;
        Ok(n > 0)
    }

    async fn site_statuses(&self) -> Result<Vec<(String, i64, Vec<u8>)>> {
        Ok(self
            .conn()
            .await?
            .query(
                "SELECT s.site, s.imported_ms, s.encoded FROM site_status s JOIN sites t ON t.name = s.site ORDER BY s.site",
                &[],
            )
            .await
            .map_err(db("read sites' status"))?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    async fn summary(&self) -> Result<Summary> {
        let conn = self.conn().await?;
        let clusters = conn
            .query(
                "SELECT phase, health, COUNT(*) FROM clusters WHERE revoked_ms IS NULL GROUP BY phase, health",
                &[],
            )
            .await
            .map_err(db("count clusters"))?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2) as u64))
            .collect();
        let rollouts = conn
            .query("SELECT phase, COUNT(*) FROM rollouts GROUP BY phase", &[])
            .await
            .map_err(db("count rollouts"))?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect();
        Ok(Summary { clusters, rollouts })
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }

    async fn relay_preview(&self, cluster: &str, request: Vec<u8>) -> Result<bool> {
        use base64::Engine;
        let payload = format!(
            "{}\n{cluster}\n{}",
            self.replica,
            base64::engine::general_purpose::STANDARD.encode(request)
        );
        if payload.len() >= PAYLOAD {
            return Err(Error::Config(format!(
                "the preview request for {cluster} is too large to relay to another coordinator"
            )));
        }
        self.conn()
            .await?
            .execute("SELECT pg_notify($1, $2)", &[&PREVIEW, &payload])
            .await
            .map_err(db("relay a preview"))?;
        Ok(true)
    }

    async fn answer_relayed(&self, id: &str, answer: Vec<u8>) -> Result<()> {
        let conn = self.conn().await?;
        // Answers nobody took (the asker gave up) go after ten minutes.
        conn.execute(
            &format!(
                "WITH stale AS (DELETE FROM preview_answers WHERE at_ms < {DB_NOW_MS} - 600000)
                 INSERT INTO preview_answers (id, answer, at_ms) VALUES ($1, $2, {DB_NOW_MS})
                 ON CONFLICT (id) DO UPDATE SET answer = EXCLUDED.answer, at_ms = EXCLUDED.at_ms"
            ),
            &[&id, &answer],
        )
        .await
        .map_err(db("store a preview's answer"))?;
        let payload = format!("{}\n{id}", self.replica);
        conn.execute("SELECT pg_notify($1, $2)", &[&PREVIEW_ANSWERED, &payload])
            .await
            .map_err(db("notify the other coordinators"))?;
        Ok(())
    }

    async fn take_relayed(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .await?
            .query_opt(
                "DELETE FROM preview_answers WHERE id = $1 RETURNING answer",
                &[&id],
            )
            .await
            .map_err(db("take a preview's answer"))?
            .map(|r| r.get(0)))
    }

    async fn relay_command(&self, id: &str, request: Vec<u8>) -> Result<bool> {
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(db("relay a rollout command"))?;
        // Commands nobody settled (their asker is gone) go after ten minutes.
        tx.execute(
            &format!(
                "WITH stale AS (DELETE FROM relayed_commands WHERE asked_ms < {DB_NOW_MS} - 600000)
                 INSERT INTO relayed_commands (id, request, asked_ms) VALUES ($1, $2, {DB_NOW_MS})"
            ),
            &[&id, &request],
        )
        .await
        .map_err(db("relay a rollout command"))?;
        notify(&tx, &self.replica, COMMAND, &[id]).await?;
        tx.commit().await.map_err(db("relay a rollout command"))?;
        Ok(true)
    }

    async fn take_command(&self, id: &str, taker: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .await?
            .query_opt(
                "UPDATE relayed_commands SET taken_by = $2 WHERE id = $1 AND taken_by IS NULL RETURNING request",
                &[&id, &taker],
            )
            .await
            .map_err(db("take a relayed rollout command"))?
            .map(|r| r.get(0)))
    }

    async fn untaken_commands(&self, within_ms: i64) -> Result<Vec<String>> {
        let rows = self
            .conn()
            .await?
            .query(
                &format!(
                    "SELECT id FROM relayed_commands WHERE taken_by IS NULL AND asked_ms > {DB_NOW_MS} - $1
                     ORDER BY asked_ms, id"
                ),
                &[&within_ms],
            )
            .await
            .map_err(db("read relayed rollout commands"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn answer_command(&self, id: &str, answer: Vec<u8>) -> Result<()> {
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(db("answer a rollout command"))?;
        tx.execute(
            "UPDATE relayed_commands SET answer = $2 WHERE id = $1",
            &[&id, &answer],
        )
        .await
        .map_err(db("answer a rollout command"))?;
        notify(&tx, &self.replica, COMMAND_ANSWERED, &[id]).await?;
        tx.commit().await.map_err(db("answer a rollout command"))?;
        Ok(())
    }

    async fn command_answer(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .await?
            .query_opt(
                "DELETE FROM relayed_commands WHERE id = $1 AND answer IS NOT NULL RETURNING answer",
                &[&id],
            )
            .await
            .map_err(db("read a rollout command's answer"))?
            .map(|r| r.get(0)))
    }

    async fn withdraw_command(&self, id: &str) -> Result<bool> {
        Ok(self
            .conn()
            .await?
            .execute(
                "DELETE FROM relayed_commands WHERE id = $1 AND taken_by IS NULL",
                &[&id],
            )
            .await
            .map_err(db("withdraw a rollout command"))?
            == 1)
    }

    async fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<Lease> {
        let conn = self.conn().await?;
        // Renewed by its holder, or taken over once expired (the token
        // moves on, so the old holder's fenced writes are refused).
        let taken = conn
            .query_opt(
                &format!(
                    "INSERT INTO leases (name, holder, token, expires_ms) VALUES ($1, $2, 1, {DB_NOW_MS} + $3)
                     ON CONFLICT (name) DO UPDATE SET
                         token = CASE WHEN leases.holder = EXCLUDED.holder THEN leases.token ELSE leases.token + 1 END,
                         holder = EXCLUDED.holder, expires_ms = EXCLUDED.expires_ms
                     WHERE leases.holder = EXCLUDED.holder OR leases.expires_ms <= {DB_NOW_MS}
                     RETURNING token"
                ),
                &[&name, &holder, &ttl_ms],
            )
            .await
            .map_err(db("take a lease"))?;
        if let Some(r) = taken {
            return Ok(Lease::Held(r.get(0)));
        }
        let other = conn
            .query_opt("SELECT holder FROM leases WHERE name = $1", &[&name])
            .await
            .map_err(db("read a lease"))?;
        Ok(Lease::Elsewhere(
            other.map(|r| r.get(0)).unwrap_or_default(),
        ))
    }
}
