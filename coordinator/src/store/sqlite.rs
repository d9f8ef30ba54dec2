//! The embedded store: one SQLite file (WAL) in the data dir.
//!
//! One thread owns the connection; callers send it jobs over a bounded
//! channel and await the answer, so no runtime worker ever waits on SQLite.
//! The thread runs whatever jobs are queued in one transaction and answers
//! them after the commit (group commit): under load thousands of status
//! reports cost one commit, and an answer never claims what a failed commit
//! undid. A job of several statements runs under its own savepoint, so a
//! job that fails leaves nothing behind in its batch.

use super::{
    Advance, BackendError, ClusterRecord, Encoded, Error, MemberRow, PinChange, PinnedCluster,
    Result, RolloutRow, SiteRecord, Store, Summary, encoded, labels_json, labels_of, pin_of,
    pin_reason, refuse_overlap, rollout_number, rollout_of, site_of,
};
use ferry_proto::Commit;
use ferry_proto::ledger::{Event, LedgerEntry};
use ferry_proto::rollout::{ClusterProgress, Rollout, Spec, State};
use ferry_proto::v1::StatusReport;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Jobs a batch may carry at most.
const BATCH: usize = 512;

/// Jobs queued before callers wait for room.
const QUEUE: usize = 4096;

fn db(what: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |e| Error::Db {
        what: what.to_string(),
        source: Arc::new(e),
    }
}

/// Schema migrations, applied in order; the index + 1 is the version
/// (`PRAGMA user_version`). Never edit one that shipped: add another.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE clusters (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL DEFAULT '{}',
    path_override TEXT,
    agent_version TEXT NOT NULL DEFAULT '',
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    status BLOB
);
CREATE TABLE pins (
    cluster TEXT PRIMARY KEY REFERENCES clusters(name),
    commit_sha TEXT NOT NULL,
    generation INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    cluster TEXT NOT NULL,
    from_commit TEXT NOT NULL,
    to_commit TEXT NOT NULL,
    reason TEXT NOT NULL,
    rollout TEXT NOT NULL DEFAULT ''
);
CREATE INDEX ledger_cluster ON ledger(cluster, id);
"#,
    r#"
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    active INTEGER NOT NULL,
    actor TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    rollout TEXT NOT NULL,
    cluster TEXT NOT NULL,
    message TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX events_rollout ON events(rollout, id);
"#,
    r#"
ALTER TABLE clusters ADD COLUMN revoked_ms INTEGER;
CREATE TABLE join_tokens (
    hash TEXT PRIMARY KEY,
    cluster TEXT NOT NULL REFERENCES clusters(name),
    expires_ms INTEGER NOT NULL,
    used_ms INTEGER
);
CREATE TABLE api_tokens (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
"#,
    "ALTER TABLE pins ADD COLUMN allow_mass_prune INTEGER NOT NULL DEFAULT 0;",
    // Rollout membership in its own table (it was a JSON array in `state`),
    // and the rest of the state in columns.
    r#"
CREATE TABLE rollout_clusters (
    rollout INTEGER NOT NULL REFERENCES rollouts(id),
    position INTEGER NOT NULL,
    cluster TEXT NOT NULL,
    wave INTEGER NOT NULL,
    previous TEXT NOT NULL DEFAULT '',
    phase TEXT NOT NULL,
    pinned_ms INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout, cluster)
);
CREATE INDEX rollout_clusters_cluster ON rollout_clusters(cluster);
INSERT INTO rollout_clusters (rollout, position, cluster, wave, previous, phase, pinned_ms, reason)
    SELECT r.id, c.key, json_extract(c.value, '$.name'), json_extract(c.value, '$.wave'),
           COALESCE(json_extract(c.value, '$.previous'), ''), json_extract(c.value, '$.phase'),
           COALESCE(json_extract(c.value, '$.pinnedMs'), 0), COALESCE(json_extract(c.value, '$.reason'), '')
    FROM rollouts r, json_each(r.state, '$.clusters') c;
ALTER TABLE rollouts ADD COLUMN phase TEXT NOT NULL DEFAULT 'running';
ALTER TABLE rollouts ADD COLUMN wave INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN wave_started_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN baked_since_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN approved TEXT NOT NULL DEFAULT '[]';
ALTER TABLE rollouts ADD COLUMN message TEXT NOT NULL DEFAULT '';
UPDATE rollouts SET
    phase = json_extract(state, '$.phase'),
    wave = json_extract(state, '$.wave'),
    wave_started_ms = json_extract(state, '$.waveStartedMs'),
    baked_since_ms = json_extract(state, '$.bakedSinceMs'),
    approved = json_extract(state, '$.approved'),
    message = json_extract(state, '$.message');
ALTER TABLE rollouts DROP COLUMN state;
CREATE INDEX rollouts_active ON rollouts(active);
"#,
    // Which rollout moved each pin (agents log it).
    "ALTER TABLE pins ADD COLUMN rollout TEXT NOT NULL DEFAULT '';",
    // Certificates carry the generation of their cluster's identity; revoking
    // or re-adding a cluster moves it, so no earlier certificate comes back.
    // Certificates issued before this carry none (0), as do existing clusters.
    "ALTER TABLE clusters ADD COLUMN identity_generation INTEGER NOT NULL DEFAULT 0;",
    // Phase and health of the last status, as columns, so the fleet can be
    // counted without decoding every report (metrics). Filled by the next
    // report; every agent sends one on connecting.
    r#"
ALTER TABLE clusters ADD COLUMN phase INTEGER NOT NULL DEFAULT 0;
ALTER TABLE clusters ADD COLUMN health INTEGER NOT NULL DEFAULT 0;
"#,
    // Who signed a commit, as the coordinator's verify keys named the key
    // when it checked it (the ledger shows it beside each pin).
    r#"
CREATE TABLE commit_signers (
    commit_sha TEXT PRIMARY KEY,
    signer TEXT NOT NULL,
    verified_ms INTEGER NOT NULL
);
"#,
    // Sites and what their mirrors hold.
    r#"
CREATE TABLE sites (
    name TEXT PRIMARY KEY,
    mirror_url TEXT NOT NULL,
    selector TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    refs TEXT NOT NULL DEFAULT '{}',
    commits INTEGER NOT NULL DEFAULT 0,
    reported_ms INTEGER NOT NULL DEFAULT 0,
    reported_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE mirror_commits (
    site TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    PRIMARY KEY (commit_sha, site)
) WITHOUT ROWID;
CREATE TABLE site_status (
    site TEXT PRIMARY KEY,
    exported_ms INTEGER NOT NULL,
    imported_ms INTEGER NOT NULL,
    encoded BLOB NOT NULL
);
"#,
];

const SITE_COLUMNS: &str =
    "SELECT name, mirror_url, selector, refs, commits, reported_ms, reported_by FROM sites";

fn site_row(r: &rusqlite::Row) -> rusqlite::Result<Result<SiteRecord>> {
    let refs: String = r.get(3)?;
    Ok(site_of(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        &refs,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn site_named(conn: &Connection, name: &str) -> Result<Option<SiteRecord>> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached(&format!("{SITE_COLUMNS} WHERE name = ?1"))
        .and_then(|mut st| st.query_row(params![name], site_row).optional())
        .map_err(db("read a site"))?
        .transpose()
}

/// What the store thread runs: a job, then (after the commit) its answer.
type Reply = Box<dyn FnOnce(Option<&BackendError>) + Send>;
type Job = Box<dyn FnOnce(&mut Connection) -> Reply + Send>;

/// The SQLite store; cheap to share (`Arc`), its thread ends with it.
pub struct Sqlite {
    jobs: mpsc::Sender<Job>,
    path: PathBuf,
}

impl Sqlite {
    /// Opens (creating and migrating) `ferry.db` in `dir` on the store's
    /// own thread.
    pub async fn open(dir: &Path) -> Result<Sqlite> {
        let path = dir.join("ferry.db");
        let (jobs, rx) = mpsc::channel::<Job>(QUEUE);
        let (ready_tx, ready) = oneshot::channel();
        let p = path.clone();
        std::thread::Builder::new()
            .name("ferry-store".into())
            .spawn(move || match open_conn(&p) {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(conn, rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::Db {
                what: "starting the store thread".into(),
                source: Arc::new(e),
            })?;
        ready.await.map_err(|_| Error::Closed)??;
        Ok(Sqlite { jobs, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the store thread; answers after its batch commits.
    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            Box::new(move |failed: Option<&BackendError>| {
                let result = match (result, failed) {
                    (Ok(_), Some(e)) => Err(Error::Db {
                        what: "commit".into(),
                        source: e.clone(),
                    }),
                    (r, _) => r,
                };
                let _ = tx.send(result);
            })
        });
        self.jobs.send(job).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path).map_err(db("open"))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
    )
    .map_err(db("configure"))?;
    migrate(&mut conn, MIGRATIONS)?;
    Ok(conn)
}

/// Brings the schema up to `migrations`, all in one transaction: one that
/// fails half-way leaves the database as it was.
fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<()> {
    let tx = conn.transaction().map_err(db("migrate"))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db("read schema version"))?;
    let known = migrations.len() as i64;
    for (n, sql) in super::pending(version, migrations)? {
        tx.execute_batch(sql)
            .map_err(db(&format!("migration {n}")))?;
    }
    tx.pragma_update(None, "user_version", known)
        .map_err(db("write schema version"))?;
    tx.commit().map_err(db("migrate"))
}

/// The store thread: runs queued jobs in batches, one transaction each.
fn serve(mut conn: Connection, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        // Without an outer transaction each job still commits on its own
        // (single statements, or a savepoint acting as a transaction).
        let outer = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
        let replies: Vec<Reply> = batch.into_iter().map(|job| job(&mut conn)).collect();
        let failed: Option<BackendError> = if outer {
            match conn.execute_batch("COMMIT") {
                Ok(()) => None,
                Err(e) => {
                    tracing::error!(error = %e, "committing a batch of store writes");
                    let _ = conn.execute_batch("ROLLBACK");
                    Some(Arc::new(e))
                }
            }
        } else {
            None
        };
        for r in replies {
            r(failed.as_ref());
        }
    }
}

/// Stores a cluster's report, or (without one) that it was heard from: a
/// report of an unknown cluster is refused, a heartbeat of one ignored.
fn beat(conn: &Connection, name: String, status: Option<Encoded>, now_ms: i64) -> Result<()> {
    match status {
        Some((bytes, phase, health)) => {
            let n = conn
                .prepare_cached(
                    "UPDATE clusters SET status = ?2, last_seen_ms = ?3, phase = ?4, health = ?5 WHERE name = ?1",
                )
                .and_then(|mut st| st.execute(params![name, bytes, now_ms, phase, health]))
                .map_err(db("record status"))?;
            if n == 0 {
                return Err(Error::UnknownCluster(name));
            }
        }
        None => {
            conn.prepare_cached("UPDATE clusters SET last_seen_ms = ?2 WHERE name = ?1")
                .and_then(|mut st| st.execute(params![name, now_ms]))
                .map_err(db("record heartbeat"))?;
        }
    }
    Ok(())
}

/// The row `select` (its `WHERE` naming `?1`) finds for each of `names`
/// that exists, in their order.
fn each_named<T>(
    conn: &Connection,
    select: &str,
    names: &[String],
    row: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    what: &str,
) -> Result<Vec<T>> {
    let mut st = conn.prepare_cached(select).map_err(db(what))?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if let Some(r) = st.query_row([name], &row).optional().map_err(db(what))? {
            out.push(r);
        }
    }
    Ok(out)
}

const SELECT_CLUSTER: &str =
    "SELECT c.name, c.labels, c.path_override, c.agent_version, c.last_seen_ms, c.status,
        p.commit_sha, p.generation, p.allow_mass_prune, p.rollout
     FROM clusters c LEFT JOIN pins p ON p.cluster = c.name";

fn cluster_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClusterRecord> {
    let labels: String = r.get(1)?;
    let status: Option<Vec<u8>> = r.get(5)?;
    let commit: Option<String> = r.get(6)?;
    let generation: Option<i64> = r.get(7)?;
    Ok(ClusterRecord {
        name: r.get(0)?,
        labels: labels_of(&labels),
        path_override: r.get(2)?,
        agent_version: r.get(3)?,
        last_seen_ms: r.get(4)?,
        status: status.and_then(|b| StatusReport::decode(b.as_slice()).ok()),
        pin: pin_of(commit, generation),
        allow_mass_prune: r.get::<_, Option<bool>>(8)?.unwrap_or(false),
        pin_rollout: r.get::<_, Option<String>>(9)?.filter(|s| !s.is_empty()),
        // One coordinator: its sessions are all in its hub.
        live_session: false,
    })
}

const SELECT_PINNED: &str =
    "SELECT c.name, c.labels, c.path_override, p.commit_sha, p.generation, p.allow_mass_prune, p.rollout
     FROM clusters c LEFT JOIN pins p ON p.cluster = c.name";

fn pinned_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PinnedCluster> {
    let labels: String = r.get(1)?;
    let commit: Option<String> = r.get(3)?;
    let generation: Option<i64> = r.get(4)?;
    Ok(PinnedCluster {
        name: r.get(0)?,
        labels: labels_of(&labels),
        path_override: r.get(2)?,
        pin: pin_of(commit, generation),
        allow_mass_prune: r.get::<_, Option<bool>>(5)?.unwrap_or(false),
        pin_rollout: r.get::<_, Option<String>>(6)?.filter(|s| !s.is_empty()),
    })
}

fn ledger_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerEntry> {
    let from: String = r.get(4)?;
    let to: String = r.get(5)?;
    let rollout: String = r.get(7)?;
    Ok(LedgerEntry {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        actor: r.get(2)?,
        cluster: r.get(3)?,
        from: Commit::parse(&from).ok(),
        to: Commit::parse(&to).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e))
        })?,
        reason: r.get(6)?,
        rollout: (!rollout.is_empty()).then_some(rollout),
        signer: r.get::<_, Option<String>>(8)?,
    })
}

/// Whether a cluster may be served to a certificate of `generation`
/// (`None`: no check, dev mode); returns the cluster's current generation.
fn check_identity(conn: &Connection, name: &str, generation: Option<i64>) -> Result<i64> {
    let row: Option<(Option<i64>, i64)> = conn
        .prepare_cached("SELECT revoked_ms, identity_generation FROM clusters WHERE name = ?1")
        .and_then(|mut st| {
            st.query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db("read a cluster's identity"))?;
    super::identity_verdict(name, row, generation)
}

/// The active rollout a cluster is a member of, if any.
fn active_rollout_of(conn: &Connection, cluster: &str) -> Result<Option<String>> {
    conn.prepare_cached(
        "SELECT r.id FROM rollout_clusters rc JOIN rollouts r ON r.id = rc.rollout
         WHERE rc.cluster = ?1 AND r.active = 1 LIMIT 1",
    )
    .and_then(|mut st| st.query_row([cluster], |r| r.get::<_, i64>(0)).optional())
    .map(|id| id.map(|n| format!("r{n}")))
    .map_err(db("read rollout membership"))
}

/// The active rollout (if any) of each of `clusters`. A few are looked up
/// one by one (indexed); many at once read the active membership once.
fn active_rollouts_of<'a>(
    conn: &Connection,
    clusters: impl ExactSizeIterator<Item = &'a str>,
) -> Result<BTreeMap<String, String>> {
    let mut found = BTreeMap::new();
    if clusters.len() < 64 {
        for c in clusters {
            if let Some(r) = active_rollout_of(conn, c)? {
                found.insert(c.to_string(), r);
            }
        }
        return Ok(found);
    }
    let wanted: std::collections::HashSet<&str> = clusters.collect();
    let mut st = conn
        .prepare_cached(
            "SELECT rc.cluster, r.id FROM rollout_clusters rc JOIN rollouts r ON r.id = rc.rollout
             WHERE r.active = 1",
        )
        .map_err(db("read rollout membership"))?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(db("read rollout membership"))?;
    for row in rows {
        let (cluster, id) = row.map_err(db("read rollout membership"))?;
        if wanted.contains(cluster.as_str()) {
            found.entry(cluster).or_insert_with(|| format!("r{id}"));
        }
    }
    Ok(found)
}

/// The pin logic, inside a caller's savepoint.
fn pin_in(conn: &Connection, change: &PinChange, now_ms: i64) -> Result<Vec<LedgerEntry>> {
    // A manual pin must not move a cluster an active rollout is moving,
    // decided here, in the pin's own transaction, so no rollout can start
    // between the check and the write.
    let inside = match change.rollout {
        None => Some(active_rollouts_of(
            conn,
            change.clusters.iter().map(String::as_str),
        )?),
        Some(_) => None,
    };
    let reason = pin_reason(change, inside.as_ref())?;
    let mut entries = vec![];
    // Prepared once: a pin may move thousands of clusters.
    let mut exists_q = conn
        .prepare_cached("SELECT 1 FROM clusters WHERE name = ?1")
        .map_err(db("pin"))?;
    let mut current_q = conn
        .prepare_cached(
            "SELECT commit_sha, generation, allow_mass_prune FROM pins WHERE cluster = ?1",
        )
        .map_err(db("pin"))?;
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO pins (cluster, commit_sha, generation, updated_ms, allow_mass_prune, rollout) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(cluster) DO UPDATE SET commit_sha = ?2, generation = ?3, updated_ms = ?4, allow_mass_prune = ?5, rollout = ?6",
        )
        .map_err(db("pin"))?;
    let mut ledger = conn
        .prepare_cached(
            "INSERT INTO ledger (at_ms, actor, cluster, from_commit, to_commit, reason, rollout)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(db("append to the ledger"))?;
    let rollout = change.rollout.clone().unwrap_or_default();
    for cluster in &change.clusters {
        let exists = exists_q
            .query_row([cluster], |_| Ok(()))
            .optional()
            .map_err(db("pin"))?
            .is_some();
        if !exists {
            return Err(Error::UnknownCluster(cluster.clone()));
        }
        let current: Option<(String, i64, bool)> = current_q
            .query_row([cluster], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(db("pin"))?;
        let (from, generation, allowed) = current.unwrap_or_default();
        // The same commit with the same options changes nothing.
        if from == change.commit.as_str() && allowed == change.allow_mass_prune {
            continue;
        }
        upsert
            .execute(params![
                cluster,
                change.commit.as_str(),
                generation + 1,
                now_ms,
                change.allow_mass_prune,
                rollout
            ])
            .map_err(db("pin"))?;
        ledger
            .execute(params![
                now_ms,
                change.actor,
                cluster,
                from,
                change.commit.as_str(),
                reason,
                rollout
            ])
            .map_err(db("append to the ledger"))?;
        entries.push(LedgerEntry {
            id: conn.last_insert_rowid(),
            at_ms: now_ms,
            actor: change.actor.clone(),
            cluster: cluster.clone(),
            from: Commit::parse(&from).ok(),
            to: change.commit.clone(),
            reason: reason.clone(),
            rollout: change.rollout.clone(),
            signer: None,
        });
    }
    Ok(entries)
}

fn write_members(
    conn: &Connection,
    rollout: i64,
    members: &[ClusterProgress],
    positions: impl Fn(usize) -> usize,
) -> Result<()> {
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO rollout_clusters (rollout, position, cluster, wave, previous, phase, pinned_ms, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(rollout, cluster) DO UPDATE SET phase = ?6, pinned_ms = ?7, reason = ?8",
        )
        .map_err(db("write rollout membership"))?;
    for (i, m) in members.iter().enumerate() {
        upsert
            .execute(params![
                rollout,
                positions(i) as i64,
                m.name,
                m.wave as i64,
                m.previous.as_ref().map_or("", Commit::as_str),
                m.phase.as_str(),
                m.pinned_ms,
                m.reason,
            ])
            .map_err(db("write rollout membership"))?;
    }
    Ok(())
}

const SELECT_ROLLOUT: &str = "SELECT id, spec, phase, wave, wave_started_ms, baked_since_ms, approved, message, actor, created_ms, updated_ms FROM rollouts";

/// Reads rollouts (their rows, then each one's members).
fn read_rollouts(conn: &Connection, filter: &str, args: &[i64]) -> Result<Vec<Rollout>> {
    let rows: Vec<RolloutRow> = {
        let mut st = conn
            .prepare_cached(&format!("{SELECT_ROLLOUT} {filter}"))
            .map_err(db("read rollouts"))?;
        st.query_map(rusqlite::params_from_iter(args), |r| {
            Ok(RolloutRow {
                number: r.get(0)?,
                spec: r.get(1)?,
                phase: r.get(2)?,
                wave: r.get(3)?,
                wave_started_ms: r.get(4)?,
                baked_since_ms: r.get(5)?,
                approved: r.get(6)?,
                message: r.get(7)?,
                actor: r.get(8)?,
                created_ms: r.get(9)?,
                updated_ms: r.get(10)?,
            })
        })
        .and_then(Iterator::collect)
        .map_err(db("read rollouts"))?
    };
    let mut members_q = conn
        .prepare_cached(
            "SELECT cluster, wave, previous, phase, pinned_ms, reason FROM rollout_clusters
             WHERE rollout = ?1 ORDER BY position",
        )
        .map_err(db("read rollout membership"))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let members: Vec<MemberRow> = members_q
            .query_map([row.number], |r| {
                Ok(MemberRow {
                    name: r.get(0)?,
                    wave: r.get(1)?,
                    previous: r.get(2)?,
                    phase: r.get(3)?,
                    pinned_ms: r.get(4)?,
                    reason: r.get(5)?,
                })
            })
            .and_then(Iterator::collect)
            .map_err(db("read rollout membership"))?;
        out.push(rollout_of(row, members)?);
    }
    Ok(out)
}

#[tonic::async_trait]
impl Store for Sqlite {
    async fn hello(
        &self,
        name: &str,
        certificate_generation: Option<i64>,
        declared: Option<BTreeMap<String, String>>,
        agent_version: &str,
        status: Option<StatusReport>,
        now_ms: i64,
    ) -> Result<()> {
        let (name, agent_version) = (name.to_string(), agent_version.to_string());
        let (phase, health) = status
            .as_ref()
            .map_or((None, None), |s| (Some(s.phase), Some(s.health)));
        let status = status.map(|s| s.encode_to_vec());
        self.call(move |conn| {
            if let Some(labels) = declared {
                conn.execute(
                    "INSERT INTO clusters (name, labels, agent_version, first_seen_ms, last_seen_ms, status, phase, health)
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5, COALESCE(?6, 0), COALESCE(?7, 0))
                     ON CONFLICT(name) DO UPDATE SET labels = ?2, agent_version = ?3, last_seen_ms = ?4,
                         status = COALESCE(?5, status), phase = COALESCE(?6, phase), health = COALESCE(?7, health)",
                    params![name, labels_json(&labels), agent_version, now_ms, status, phase, health],
                )
                .map_err(db("record hello"))?;
                return Ok(());
            }
            check_identity(conn, &name, certificate_generation)?;
            conn.execute(
                "UPDATE clusters SET agent_version = ?2, last_seen_ms = ?3, status = COALESCE(?4, status),
                     phase = COALESCE(?5, phase), health = COALESCE(?6, health) WHERE name = ?1",
                params![name, agent_version, now_ms, status, phase, health],
            )
            .map_err(db("record hello"))?;
            Ok(())
        })
        .await
    }

    async fn add_cluster(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        token_hash: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        let (name, token_hash) = (name.to_string(), token_hash.to_string());
        self.call(move |conn| {
            let sp = conn.savepoint().map_err(db("add a cluster"))?;
            // A new cluster starts at generation 1; adding one again moves
            // it on, so every certificate issued before is refused.
            sp.execute(
                "INSERT INTO clusters (name, labels, first_seen_ms, last_seen_ms, identity_generation)
                 VALUES (?1, ?2, ?3, 0, 1)
                 ON CONFLICT(name) DO UPDATE SET labels = ?2, revoked_ms = NULL,
                     identity_generation = identity_generation + 1",
                params![name, labels_json(&labels), now_ms],
            )
            .map_err(db("add a cluster"))?;
            sp.execute(
                "INSERT INTO join_tokens (hash, cluster, expires_ms) VALUES (?1, ?2, ?3)",
                params![token_hash, name, expires_ms],
            )
            .map_err(db("store a join token"))?;
            sp.commit().map_err(db("add a cluster"))
        })
        .await
    }

    async fn redeem(&self, token_hash: &str, now_ms: i64) -> Result<(String, i64)> {
        let token_hash = token_hash.to_string();
        self.call(move |conn| {
            let sp = conn.savepoint().map_err(db("redeem a join token"))?;
            let row: Option<(String, i64, Option<i64>, Option<i64>, i64)> = sp
                .query_row(
                    "SELECT t.cluster, t.expires_ms, t.used_ms, c.revoked_ms, c.identity_generation
                     FROM join_tokens t JOIN clusters c ON c.name = t.cluster WHERE t.hash = ?1",
                    [&token_hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()
                .map_err(db("redeem a join token"))?;
            let (cluster, expires, used, revoked, generation) =
                row.ok_or(Error::JoinToken("unknown"))?;
            super::redeemable(&cluster, expires, used, revoked, now_ms)?;
            sp.execute(
                "UPDATE join_tokens SET used_ms = ?2 WHERE hash = ?1",
                params![token_hash, now_ms],
            )
            .map_err(db("redeem a join token"))?;
            sp.commit().map_err(db("redeem a join token"))?;
            Ok((cluster, generation))
        })
        .await
    }

    async fn revoke(&self, name: &str, now_ms: i64) -> Result<()> {
        let name = name.to_string();
        self.call(move |conn| {
            let n = conn
                .execute(
                    "UPDATE clusters SET revoked_ms = ?2, identity_generation = identity_generation + 1
                     WHERE name = ?1",
                    params![name, now_ms],
                )
                .map_err(db("revoke a cluster"))?;
            if n == 0 {
                return Err(Error::UnknownCluster(name));
            }
            Ok(())
        })
        .await
    }

    async fn check_certificate(&self, name: &str, generation: Option<i64>) -> Result<i64> {
        let name = name.to_string();
        self.call(move |conn| check_identity(conn, &name, generation))
            .await
    }

    async fn create_token(&self, hash: &str, name: &str, role: &str, now_ms: i64) -> Result<()> {
        let (hash, name, role) = (hash.to_string(), name.to_string(), role.to_string());
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO api_tokens (hash, name, role, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![hash, name, role, now_ms],
            )
            .map_err(db("store a token"))?;
            Ok(())
        })
        .await
    }

    async fn token(&self, hash: &str) -> Result<Option<(String, String)>> {
        let hash = hash.to_string();
        self.call(move |conn| {
            conn.prepare_cached("SELECT name, role FROM api_tokens WHERE hash = ?1")
                .and_then(|mut st| {
                    st.query_row([&hash], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(db("read a token"))
        })
        .await
    }

    async fn token_count(&self) -> Result<i64> {
        self.call(|conn| {
            conn.query_row("SELECT COUNT(*) FROM api_tokens", [], |r| r.get(0))
                .map_err(db("count tokens"))
        })
        .await
    }

    async fn report(&self, name: &str, status: StatusReport, now_ms: i64) -> Result<()> {
        let (name, status) = (name.to_string(), encoded(status));
        self.call(move |conn| beat(conn, name, Some(status), now_ms))
            .await
    }

    async fn seen(&self, name: &str, now_ms: i64) -> Result<()> {
        let name = name.to_string();
        self.call(move |conn| beat(conn, name, None, now_ms)).await
    }

    /// A round of thousands goes to the store thread as a few jobs of
    /// [`BATCH`] clusters, not a job each (each job's channel slot, answer
    /// and wake-up cost more than its write); other writes still fit in
    /// between them.
    async fn report_many(
        &self,
        beats: Vec<(String, Option<StatusReport>, i64)>,
    ) -> Vec<Result<()>> {
        let mut rest = beats.into_iter().peekable();
        let mut jobs = vec![];
        while rest.peek().is_some() {
            let chunk: Vec<_> = rest
                .by_ref()
                .take(BATCH)
                .map(|(name, status, now_ms)| (name, status.map(encoded), now_ms))
                .collect();
            let n = chunk.len();
            jobs.push(async move {
                let answers = self
                    .call(move |conn| {
                        Ok(chunk
                            .into_iter()
                            .map(|(name, status, now_ms)| beat(conn, name, status, now_ms))
                            .collect::<Vec<_>>())
                    })
                    .await;
                match answers {
                    Ok(answers) => answers,
                    Err(e) => (0..n).map(|_| Err(e.again())).collect(),
                }
            });
        }
        futures::future::join_all(jobs)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn set_path_override(&self, name: &str, path: Option<String>) -> Result<()> {
        let name = name.to_string();
        self.call(move |conn| {
            let n = conn
                .execute(
                    "UPDATE clusters SET path_override = ?2 WHERE name = ?1",
                    params![name, path],
                )
                .map_err(db("set path"))?;
            if n == 0 {
                return Err(Error::UnknownCluster(name));
            }
            Ok(())
        })
        .await
    }

    async fn clusters(&self) -> Result<Vec<ClusterRecord>> {
        self.call(|conn| {
            conn.prepare_cached(&format!("{SELECT_CLUSTER} ORDER BY c.name"))
                .and_then(|mut st| st.query_map([], cluster_row)?.collect())
                .map_err(db("list clusters"))
        })
        .await
    }

    async fn clusters_page(&self, after: &str, limit: u32) -> Result<Vec<ClusterRecord>> {
        let after = after.to_string();
        self.call(move |conn| {
            conn.prepare_cached(&format!(
                "{SELECT_CLUSTER} WHERE c.name > ?1 ORDER BY c.name LIMIT ?2"
            ))
            .and_then(|mut st| st.query_map(params![after, limit], cluster_row)?.collect())
            .map_err(db("list clusters"))
        })
        .await
    }

    async fn cluster(&self, name: &str) -> Result<Option<ClusterRecord>> {
        let name = name.to_string();
        self.call(move |conn| {
            conn.prepare_cached(&format!("{SELECT_CLUSTER} WHERE c.name = ?1"))
                .and_then(|mut st| st.query_row([&name], cluster_row).optional())
                .map_err(db("read cluster"))
        })
        .await
    }

    async fn clusters_named(&self, names: Vec<String>) -> Result<Vec<ClusterRecord>> {
        self.call(move |conn| {
            each_named(
                conn,
                &format!("{SELECT_CLUSTER} WHERE c.name = ?1"),
                &names,
                cluster_row,
                "read clusters",
            )
        })
        .await
    }

    async fn pinned(&self, clusters: Vec<String>) -> Result<Vec<PinnedCluster>> {
        self.call(move |conn| {
            if clusters.len() < 64 {
                return each_named(
                    conn,
                    &format!("{SELECT_PINNED} WHERE c.name = ?1"),
                    &clusters,
                    pinned_row,
                    "read pins",
                );
            }
            let wanted: std::collections::HashSet<&str> =
                clusters.iter().map(String::as_str).collect();
            let mut st = conn
                .prepare_cached(SELECT_PINNED)
                .map_err(db("read pins"))?;
            let rows = st.query_map([], pinned_row).map_err(db("read pins"))?;
            let mut out = vec![];
            for row in rows {
                let p = row.map_err(db("read pins"))?;
                if wanted.contains(p.name.as_str()) {
                    out.push(p);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn pin(&self, change: PinChange, now_ms: i64) -> Result<Vec<LedgerEntry>> {
        self.call(move |conn| {
            let sp = conn.savepoint().map_err(db("pin"))?;
            let entries = pin_in(&sp, &change, now_ms)?;
            sp.commit().map_err(db("pin"))?;
            Ok(entries)
        })
        .await
    }

    async fn history(&self, cluster: Option<&str>, limit: u32) -> Result<Vec<LedgerEntry>> {
        let cluster = cluster.map(str::to_string);
        self.call(move |conn| {
            conn.prepare_cached(
                "SELECT l.id, l.at_ms, l.actor, l.cluster, l.from_commit, l.to_commit, l.reason, l.rollout, s.signer
                 FROM ledger l LEFT JOIN commit_signers s ON s.commit_sha = l.to_commit
                 WHERE ?1 IS NULL OR l.cluster = ?1 ORDER BY l.id DESC LIMIT ?2",
            )
            .and_then(|mut st| st.query_map(params![cluster, limit], ledger_row)?.collect())
            .map_err(db("read the ledger"))
        })
        .await
    }

    async fn create_rollout(
        &self,
        spec: Spec,
        state: State,
        actor: &str,
        now_ms: i64,
    ) -> Result<Rollout> {
        let actor = actor.to_string();
        self.call(move |conn| {
            let sp = conn.savepoint().map_err(db("create a rollout"))?;
            // Clusters already in an active rollout, by that rollout.
            let inside = active_rollouts_of(&sp, state.clusters.iter().map(|c| c.name.as_str()))?;
            refuse_overlap(&state, &inside)?;
            sp.execute(
                "INSERT INTO rollouts (spec, active, actor, created_ms, updated_ms, phase, wave,
                     wave_started_ms, baked_since_ms, approved, message)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    serde_json::to_string(&spec).expect("specs serialize"),
                    state.phase.is_active(),
                    actor,
                    now_ms,
                    state.phase.as_str(),
                    state.wave as i64,
                    state.wave_started_ms,
                    state.baked_since_ms,
                    serde_json::to_string(&state.approved).expect("sets serialize"),
                    state.message,
                ],
            )
            .map_err(db("create a rollout"))?;
            let n = sp.last_insert_rowid();
            write_members(&sp, n, &state.clusters, |i| i)?;
            sp.commit().map_err(db("create a rollout"))?;
            Ok(Rollout {
                id: format!("r{n}"),
                spec,
                state,
                actor,
                created_ms: now_ms,
                updated_ms: now_ms,
            })
        })
        .await
    }

    async fn rollouts(&self, active_only: bool) -> Result<Vec<Rollout>> {
        self.call(move |conn| {
            read_rollouts(
                conn,
                "WHERE active = 1 OR ?1 = 0 ORDER BY id DESC",
                &[active_only as i64],
            )
        })
        .await
    }

    async fn rollout(&self, id: &str) -> Result<Rollout> {
        let id = id.to_string();
        let n = rollout_number(&id)?;
        self.call(move |conn| {
            read_rollouts(conn, "WHERE id = ?1", &[n])?
                .pop()
                .ok_or(Error::UnknownRollout(id))
        })
        .await
    }

    async fn advance(&self, step: Advance, now_ms: i64) -> Result<(Vec<LedgerEntry>, Vec<Event>)> {
        let n = rollout_number(&step.id)?;
        self.call(move |conn| {
            let sp = conn.savepoint().map_err(db("advance a rollout"))?;
            let mut entries = vec![];
            for (cluster, commit, reason) in &step.pins {
                entries.extend(pin_in(
                    &sp,
                    &PinChange {
                        clusters: vec![cluster.clone()],
                        commit: commit.clone(),
                        actor: step.actor.clone(),
                        reason: reason.clone(),
                        rollout: Some(step.id.clone()),
                        force: false,
                        allow_mass_prune: false,
                    },
                    now_ms,
                )?);
            }
            let mut events = vec![];
            {
                let mut insert = sp
                    .prepare_cached(
                        "INSERT INTO events (at_ms, rollout, cluster, message, actor) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(db("record an event"))?;
                for (cluster, message) in &step.events {
                    insert
                        .execute(params![now_ms, step.id, cluster, message, step.actor])
                        .map_err(db("record an event"))?;
                    events.push(Event {
                        id: sp.last_insert_rowid(),
                        at_ms: now_ms,
                        rollout: step.id.clone(),
                        cluster: cluster.clone(),
                        message: message.clone(),
                        actor: step.actor.clone(),
                    });
                }
            }
            let s = &step.state;
            let updated = sp
                .execute(
                    "UPDATE rollouts SET phase = ?2, active = ?3, wave = ?4, wave_started_ms = ?5,
                         baked_since_ms = ?6, approved = ?7, message = ?8, updated_ms = ?9
                     WHERE id = ?1",
                    params![
                        n,
                        s.phase.as_str(),
                        s.phase.is_active(),
                        s.wave as i64,
                        s.wave_started_ms,
                        s.baked_since_ms,
                        serde_json::to_string(&s.approved).expect("sets serialize"),
                        s.message,
                        now_ms
                    ],
                )
                .map_err(db("advance a rollout"))?;
            if updated == 0 {
                return Err(Error::UnknownRollout(step.id.clone()));
            }
            write_members(&sp, n, &step.changed, |_| 0)?;
            sp.commit().map_err(db("advance a rollout"))?;
            Ok((entries, events))
        })
        .await
    }

    async fn record_signer(&self, commit: &Commit, signer: &str, now_ms: i64) -> Result<()> {
        let (commit, signer) = (commit.to_string(), signer.to_string());
        self.call(move |conn| {
            conn.prepare_cached(
                "INSERT INTO commit_signers (commit_sha, signer, verified_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(commit_sha) DO UPDATE SET signer = ?2, verified_ms = ?3",
            )
            .and_then(|mut st| st.execute(params![commit, signer, now_ms]))
            .map_err(db("record a signer"))?;
            Ok(())
        })
        .await
    }

    async fn add_site(&self, site: SiteRecord, now_ms: i64) -> Result<()> {
        self.call(move |conn| {
            let added = conn
                .prepare_cached(
                    "INSERT INTO sites (name, mirror_url, selector, created_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(name) DO NOTHING",
                )
                .and_then(|mut st| {
                    st.execute(params![site.name, site.mirror_url, site.selector, now_ms])
                })
                .map_err(db("add a site"))?;
            if added == 0 {
                return Err(Error::SiteExists(site.name));
            }
            Ok(())
        })
        .await
    }

    async fn remove_site(&self, name: &str) -> Result<SiteRecord> {
        let name = name.to_string();
        self.call(move |conn| {
            let site = site_named(conn, &name)?.ok_or_else(|| Error::UnknownSite(name.clone()))?;
            conn.execute("DELETE FROM mirror_commits WHERE site = ?1", params![name])
                .and_then(|_| {
                    conn.execute("DELETE FROM site_status WHERE site = ?1", params![name])
                })
                .and_then(|_| conn.execute("DELETE FROM sites WHERE name = ?1", params![name]))
                .map_err(db("remove a site"))?;
            Ok(site)
        })
        .await
    }

    async fn cluster_labels(&self) -> Result<Vec<(String, BTreeMap<String, String>)>> {
        self.call(|conn| {
            conn.prepare_cached(
                "SELECT name, labels FROM clusters WHERE revoked_ms IS NULL ORDER BY name",
            )
            .and_then(|mut st| {
                st.query_map([], |r| {
                    let labels: String = r.get(1)?;
                    Ok((r.get(0)?, labels_of(&labels)))
                })?
                .collect()
            })
            .map_err(db("read cluster labels"))
        })
        .await
    }

    async fn sites(&self) -> Result<Vec<SiteRecord>> {
        self.call(|conn| {
            let mut st = conn
                .prepare_cached(&format!("{SITE_COLUMNS} ORDER BY name"))
                .map_err(db("read sites"))?;
            let rows = st.query_map([], site_row).map_err(db("read sites"))?;
            rows.map(|r| r.map_err(db("read sites"))?).collect()
        })
        .await
    }

    async fn report_mirror(
        &self,
        site: &str,
        refs: BTreeMap<String, String>,
        commits: Vec<String>,
        how: &str,
        now_ms: i64,
    ) -> Result<SiteRecord> {
        let (site, how) = (site.to_string(), how.to_string());
        self.call(move |conn| {
            if site_named(conn, &site)?.is_none() {
                return Err(Error::UnknownSite(site));
            }
            let refs_json = serde_json::to_string(&refs).expect("a map serializes");
            conn.execute(
                "UPDATE sites SET refs = ?2, commits = ?3, reported_ms = ?4, reported_by = ?5 WHERE name = ?1",
                params![site, refs_json, commits.len() as i64, now_ms, how],
            )
            .and_then(|_| conn.execute("DELETE FROM mirror_commits WHERE site = ?1", params![site]))
            .map_err(db("record a mirror"))?;
            let mut st = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO mirror_commits (commit_sha, site) VALUES (?1, ?2)",
                )
                .map_err(db("record a mirror"))?;
            for c in &commits {
                st.execute(params![c, site]).map_err(db("record a mirror"))?;
            }
            site_named(conn, &site)?.ok_or(Error::UnknownSite(site))
        })
        .await
    }

    async fn sites_holding(&self, commit: &Commit) -> Result<Vec<String>> {
        let commit = commit.to_string();
        self.call(move |conn| {
            conn.prepare_cached("SELECT site FROM mirror_commits WHERE commit_sha = ?1")
                .and_then(|mut st| st.query_map(params![commit], |r| r.get(0))?.collect())
                .map_err(db("read mirrors"))
        })
        .await
    }

    async fn import_site_status(
        &self,
        site: &str,
        exported_ms: i64,
        encoded: Vec<u8>,
        now_ms: i64,
    ) -> Result<bool> {
        let site = site.to_string();
        self.call(move |conn| {
            if site_named(conn, &site)?.is_none() {
                return Err(Error::UnknownSite(site));
            }
            let n = conn
                .prepare_cached(
                    "INSERT INTO site_status (site, exported_ms, imported_ms, encoded) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(site) DO UPDATE SET exported_ms = ?2, imported_ms = ?3, encoded = ?4
                     WHERE site_status.exported_ms < ?2",
                )
                .and_then(|mut st| st.execute(params![site, exported_ms, now_ms, encoded]))
                .map_err(db("import a site's status"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn site_statuses(&self) -> Result<Vec<(String, i64, Vec<u8>)>> {
        self.call(|conn| {
            conn.prepare_cached(
                "SELECT s.site, s.imported_ms, s.encoded FROM site_status s JOIN sites t ON t.name = s.site ORDER BY s.site",
            )
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(db("read sites' status"))
        })
        .await
    }

    async fn summary(&self) -> Result<Summary> {
        self.call(|conn| {
            let mut out = Summary::default();
            let mut st = conn
                .prepare_cached(
                    "SELECT phase, health, COUNT(*) FROM clusters WHERE revoked_ms IS NULL GROUP BY phase, health",
                )
                .map_err(db("count clusters"))?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))
                .map_err(db("count clusters"))?;
            for row in rows {
                out.clusters.push(row.map_err(db("count clusters"))?);
            }
            let mut st = conn
                .prepare_cached("SELECT phase, COUNT(*) FROM rollouts GROUP BY phase")
                .map_err(db("count rollouts"))?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
                .map_err(db("count rollouts"))?;
            for row in rows {
                out.rollouts.push(row.map_err(db("count rollouts"))?);
            }
            Ok(out)
        })
        .await
    }

    async fn events(&self, rollout: Option<&str>, after_id: i64, limit: u32) -> Result<Vec<Event>> {
        let rollout = rollout.map(str::to_string);
        self.call(move |conn| {
            conn.prepare_cached(
                "SELECT id, at_ms, rollout, cluster, message, actor FROM events
                 WHERE id > ?1 AND (?2 IS NULL OR rollout = ?2) ORDER BY id LIMIT ?3",
            )
            .and_then(|mut st| {
                st.query_map(params![after_id, rollout, limit], |r| {
                    Ok(Event {
                        id: r.get(0)?,
                        at_ms: r.get(1)?,
                        rollout: r.get(2)?,
                        cluster: r.get(3)?,
                        message: r.get(4)?,
                        actor: r.get(5)?,
                    })
                })?
                .collect()
            })
            .map_err(db("read events"))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use ferry_proto::rollout::{ClusterPhase, Policy, RolloutPhase, Selector, WaveSpec};
    use std::collections::BTreeSet;

    fn commit(c: char) -> Commit {
        Commit::parse(&c.to_string().repeat(40)).unwrap()
    }

    fn spec() -> Spec {
        Spec {
            reference: "main".into(),
            commit: commit('c'),
            waves: vec![WaveSpec {
                name: "w".into(),
                selector: Selector::Percent(100),
                policy: Policy::default(),
            }],
            auto_rollback: false,
        }
    }

    /// A database written by 0.1.0 (schema 4, membership as JSON) opens
    /// with its rollouts whole.
    #[tokio::test]
    async fn an_old_database_migrates_with_its_rollouts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut conn = Connection::open(dir.path().join("ferry.db")).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..4] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 4).unwrap();
            tx.commit().unwrap();
            let old_state = format!(
                r#"{{"phase":"awaitingApproval","wave":1,"waveStartedMs":0,"bakedSinceMs":0,"approved":[0],"clusters":[{{"name":"a","wave":0,"previous":"{}","phase":"healthy","pinnedMs":12,"reason":""}},{{"name":"b","wave":1,"previous":"","phase":"waiting","pinnedMs":0,"reason":""}}],"message":"wave w waits for approval"}}"#,
                "a".repeat(40)
            );
            conn.execute(
                "INSERT INTO rollouts (spec, state, active, actor, created_ms, updated_ms) VALUES (?1, ?2, 1, 'op', 1, 2)",
                params![serde_json::to_string(&spec()).unwrap(), old_state],
            )
            .unwrap();
        }
        let s = Sqlite::open(dir.path()).await.unwrap();
        let r = s.rollout("r1").await.unwrap();
        assert_eq!(r.state.phase, RolloutPhase::AwaitingApproval);
        assert_eq!(r.state.wave, 1);
        assert_eq!(r.state.approved, BTreeSet::from([0]));
        assert_eq!(r.state.message, "wave w waits for approval");
        let names: Vec<_> = r
            .state
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.phase))
            .collect();
        assert_eq!(
            names,
            [("a", ClusterPhase::Healthy), ("b", ClusterPhase::Waiting)]
        );
        assert_eq!(r.state.clusters[0].previous, Some(commit('a')));
        assert_eq!(r.state.clusters[0].pinned_ms, 12);
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("ferry.db")).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let e = Sqlite::open(dir.path()).await.err().expect("refused");
        assert!(matches!(e, Error::TooNew { found: 99, .. }), "{e}");
    }

    /// A migration that fails half-way (a statement in the middle of it)
    /// leaves the database at the version it was, with nothing of it
    /// applied, and says which migration failed.
    #[test]
    fn an_interrupted_migration_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &MIGRATIONS[..2]).unwrap();
        let mut broken = MIGRATIONS[..3].to_vec();
        broken.push("CREATE TABLE half (x INTEGER); INSERT INTO nowhere VALUES (1);");
        let e = migrate(&mut conn, &broken).unwrap_err();
        assert!(e.to_string().contains("migration 4"), "{e}");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(!tables.contains(&"half".to_string()), "{tables:?}");
        assert!(!tables.contains(&"join_tokens".to_string()), "{tables:?}");
        drop(conn);
        // And the whole list still applies afterwards.
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, MIGRATIONS).unwrap();
    }
}
