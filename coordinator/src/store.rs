//! The coordinator's durable state in one SQLite file (WAL): clusters, pins
//! and the append-only pin ledger. Every pin change and its ledger entry are
//! written in one transaction, so a crash never leaves a pin without its
//! record or a record without its pin. Never talks to the network.

use ferry_proto::Commit;
use ferry_proto::v1::{LedgerEntry, StatusReport};
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened, migrated, read or written.
    #[error("database {what}: {source}")]
    Db {
        what: String,
        #[source]
        source: rusqlite::Error,
    },
    /// A cluster the coordinator has never heard of.
    #[error("unknown cluster {0:?} (a cluster appears when its agent first connects)")]
    UnknownCluster(String),
    /// A rollout that would share clusters with an active one.
    #[error("rollout {rollout} is already moving cluster(s) {}", .clusters.join(", "))]
    Overlap {
        rollout: String,
        clusters: Vec<String>,
    },
    /// A join token that is unknown, expired or already used.
    #[error("the join token is {0}")]
    JoinToken(&'static str),
    /// A revoked cluster.
    #[error("cluster {0:?} is revoked")]
    Revoked(String),
    /// A rollout id that does not exist.
    #[error("unknown rollout {0:?}")]
    UnknownRollout(String),
    /// The database was written by a newer coordinator.
    #[error("the database schema is version {found}, newer than this coordinator's {known}")]
    TooNew { found: i64, known: i64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn db(what: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |source| Error::Db {
        what: what.to_string(),
        source,
    }
}

/// Schema migrations, applied in order; the index + 1 is the version.
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
];

/// A cluster as the store knows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub path_override: Option<String>,
    pub agent_version: String,
    pub last_seen_ms: i64,
    pub status: Option<StatusReport>,
    /// The pinned commit and the assignment generation.
    pub pin: Option<(Commit, u64)>,
    /// The pin lets the agent prune past its safety share.
    pub allow_mass_prune: bool,
}

/// A requested pin change.
pub struct PinChange<'a> {
    pub clusters: &'a [String],
    pub commit: &'a Commit,
    pub actor: &'a str,
    pub reason: &'a str,
    pub rollout: &'a str,
    /// Let the agent prune past its safety share (this pin only).
    pub allow_mass_prune: bool,
}

pub struct Store {
    conn: Mutex<Connection>,
}

/// A stored rollout: spec and state as JSON.
#[derive(Clone, Debug)]
pub struct RolloutRecord {
    pub id: String,
    pub spec: String,
    pub state: String,
    pub actor: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A stored event.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    pub id: i64,
    pub at_ms: i64,
    pub rollout: String,
    pub cluster: String,
    pub message: String,
    pub actor: String,
}

/// One rollout transition: its new state, the pins it makes, its events.
pub struct Advance<'a> {
    pub id: &'a str,
    pub state: &'a str,
    pub active: bool,
    pub actor: &'a str,
    /// (cluster, commit, reason)
    pub pins: &'a [(String, Commit, String)],
    /// (cluster or "", message)
    pub events: &'a [(String, String)],
}

fn rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RolloutRecord> {
    Ok(RolloutRecord {
        id: format!("r{}", r.get::<_, i64>(0)?),
        spec: r.get(1)?,
        state: r.get(2)?,
        actor: r.get(3)?,
        created_ms: r.get(4)?,
        updated_ms: r.get(5)?,
    })
}

/// The pin logic, inside a caller's transaction.
fn pin_in(
    tx: &rusqlite::Transaction<'_>,
    change: &PinChange<'_>,
    now_ms: i64,
) -> Result<Vec<LedgerEntry>> {
    let mut entries = vec![];
    // Prepared once: a pin may move thousands of clusters.
    let mut exists_q = tx
        .prepare_cached("SELECT 1 FROM clusters WHERE name = ?1")
        .map_err(db("pin"))?;
    let mut current_q = tx
        .prepare_cached(
            "SELECT commit_sha, generation, allow_mass_prune FROM pins WHERE cluster = ?1",
        )
        .map_err(db("pin"))?;
    let mut upsert = tx
        .prepare_cached(
            "INSERT INTO pins (cluster, commit_sha, generation, updated_ms, allow_mass_prune) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(cluster) DO UPDATE SET commit_sha = ?2, generation = ?3, updated_ms = ?4, allow_mass_prune = ?5",
        )
        .map_err(db("pin"))?;
    let mut ledger = tx
        .prepare_cached(
            "INSERT INTO ledger (at_ms, actor, cluster, from_commit, to_commit, reason, rollout)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(db("append to the ledger"))?;
    for cluster in change.clusters {
        let exists: bool = exists_q
            .query_row([cluster], |_| Ok(true))
            .optional()
            .map_err(db("pin"))?
            .unwrap_or(false);
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
                change.allow_mass_prune
            ])
            .map_err(db("pin"))?;
        let reason = if change.allow_mass_prune {
            format!("{} [mass prune allowed]", change.reason)
                .trim()
                .to_string()
        } else {
            change.reason.to_string()
        };
        ledger
            .execute(params![
                now_ms,
                change.actor,
                cluster,
                from,
                change.commit.as_str(),
                reason,
                change.rollout
            ])
            .map_err(db("append to the ledger"))?;
        entries.push(LedgerEntry {
            id: tx.last_insert_rowid(),
            at_unix_ms: now_ms,
            actor: change.actor.to_string(),
            cluster: cluster.clone(),
            from_commit: from,
            to_commit: change.commit.to_string(),
            reason,
            rollout: change.rollout.to_string(),
        });
    }
    Ok(entries)
}

impl Store {
    /// Opens (creating and migrating) `ferry.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("ferry.db");
        let conn = Connection::open(&path).map_err(db("open"))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
        )
        .map_err(db("configure"))?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("migrate"))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db("read schema version"))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(Error::TooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)
                .map_err(db(&format!("migration {}", i + 1)))?;
        }
        tx.pragma_update(None, "user_version", known)
            .map_err(db("write schema version"))?;
        tx.commit().map_err(db("migrate"))
    }

    /// Records a Hello from an enrolled cluster: agent version and state.
    /// Labels are the operator's (set by `cluster add`), never the agent's,
    /// except in insecure dev mode where `declared` labels create the cluster.
    pub fn hello(
        &self,
        name: &str,
        declared: Option<&BTreeMap<String, String>>,
        agent_version: &str,
        status: Option<&StatusReport>,
        now_ms: i64,
    ) -> Result<()> {
        let status = status.map(Message::encode_to_vec);
        let conn = self.conn();
        if let Some(labels) = declared {
            let labels = serde_json::to_string(labels).expect("labels serialize");
            conn.execute(
                "INSERT INTO clusters (name, labels, agent_version, first_seen_ms, last_seen_ms, status)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)
                 ON CONFLICT(name) DO UPDATE SET labels = ?2, agent_version = ?3, last_seen_ms = ?4,
                     status = COALESCE(?5, status)",
                params![name, labels, agent_version, now_ms, status],
            )
            .map_err(db("record hello"))?;
            return Ok(());
        }
        let revoked: Option<Option<i64>> = conn
            .query_row(
                "SELECT revoked_ms FROM clusters WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("record hello"))?;
        match revoked {
            None => return Err(Error::UnknownCluster(name.to_string())),
            Some(Some(_)) => return Err(Error::Revoked(name.to_string())),
            Some(None) => {}
        }
        conn.execute(
            "UPDATE clusters SET agent_version = ?2, last_seen_ms = ?3, status = COALESCE(?4, status) WHERE name = ?1",
            params![name, agent_version, now_ms, status],
        )
        .map_err(db("record hello"))?;
        Ok(())
    }

    /// Creates (or re-admits) a cluster with its labels and a join token.
    pub fn add_cluster(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        token_hash: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        let labels = serde_json::to_string(labels).expect("labels serialize");
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("add a cluster"))?;
        tx.execute(
            "INSERT INTO clusters (name, labels, first_seen_ms, last_seen_ms) VALUES (?1, ?2, ?3, 0)
             ON CONFLICT(name) DO UPDATE SET labels = ?2, revoked_ms = NULL",
            params![name, labels, now_ms],
        )
        .map_err(db("add a cluster"))?;
        tx.execute(
            "INSERT INTO join_tokens (hash, cluster, expires_ms) VALUES (?1, ?2, ?3)",
            params![token_hash, name, expires_ms],
        )
        .map_err(db("store a join token"))?;
        tx.commit().map_err(db("add a cluster"))
    }

    /// Uses a join token once; returns its cluster.
    pub fn redeem(&self, token_hash: &str, now_ms: i64) -> Result<String> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("redeem a join token"))?;
        let row: Option<(String, i64, Option<i64>, Option<i64>)> = tx
            .query_row(
                "SELECT t.cluster, t.expires_ms, t.used_ms, c.revoked_ms FROM join_tokens t
                 JOIN clusters c ON c.name = t.cluster WHERE t.hash = ?1",
                [token_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db("redeem a join token"))?;
        let (cluster, expires, used, revoked) = row.ok_or(Error::JoinToken("unknown"))?;
        if used.is_some() {
            return Err(Error::JoinToken("already used"));
        }
        if expires < now_ms {
            return Err(Error::JoinToken("expired"));
        }
        if revoked.is_some() {
            return Err(Error::Revoked(cluster));
        }
        tx.execute(
            "UPDATE join_tokens SET used_ms = ?2 WHERE hash = ?1",
            params![token_hash, now_ms],
        )
        .map_err(db("redeem a join token"))?;
        tx.commit().map_err(db("redeem a join token"))?;
        Ok(cluster)
    }

    pub fn revoke(&self, name: &str, now_ms: i64) -> Result<()> {
        let n = self
            .conn()
            .execute(
                "UPDATE clusters SET revoked_ms = ?2 WHERE name = ?1",
                params![name, now_ms],
            )
            .map_err(db("revoke a cluster"))?;
        if n == 0 {
            return Err(Error::UnknownCluster(name.to_string()));
        }
        Ok(())
    }

    pub fn is_revoked(&self, name: &str) -> Result<bool> {
        let r: Option<Option<i64>> = self
            .conn()
            .query_row(
                "SELECT revoked_ms FROM clusters WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("read a cluster"))?;
        match r {
            None => Err(Error::UnknownCluster(name.to_string())),
            Some(v) => Ok(v.is_some()),
        }
    }

    pub fn create_token(&self, hash: &str, name: &str, role: &str, now_ms: i64) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO api_tokens (hash, name, role, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![hash, name, role, now_ms],
            )
            .map_err(db("store a token"))?;
        Ok(())
    }

    /// (name, role) of a token, by its hash.
    pub fn token(&self, hash: &str) -> Result<Option<(String, String)>> {
        self.conn()
            .query_row(
                "SELECT name, role FROM api_tokens WHERE hash = ?1",
                [hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db("read a token"))
    }

    pub fn token_count(&self) -> Result<i64> {
        self.conn()
            .query_row("SELECT COUNT(*) FROM api_tokens", [], |r| r.get(0))
            .map_err(db("count tokens"))
    }

    /// Stores a cluster's latest full status.
    pub fn report(&self, name: &str, status: &StatusReport, now_ms: i64) -> Result<()> {
        let n = self
            .conn()
            .prepare_cached("UPDATE clusters SET status = ?2, last_seen_ms = ?3 WHERE name = ?1")
            .and_then(|mut st| st.execute(params![name, status.encode_to_vec(), now_ms]))
            .map_err(db("record status"))?;
        if n == 0 {
            return Err(Error::UnknownCluster(name.to_string()));
        }
        Ok(())
    }

    /// Notes that a cluster was heard from.
    pub fn seen(&self, name: &str, now_ms: i64) -> Result<()> {
        self.conn()
            .prepare_cached("UPDATE clusters SET last_seen_ms = ?2 WHERE name = ?1")
            .and_then(|mut st| st.execute(params![name, now_ms]))
            .map_err(db("record heartbeat"))?;
        Ok(())
    }

    pub fn set_path_override(&self, name: &str, path: Option<&str>) -> Result<()> {
        let n = self
            .conn()
            .execute(
                "UPDATE clusters SET path_override = ?2 WHERE name = ?1",
                params![name, path],
            )
            .map_err(db("set path"))?;
        if n == 0 {
            return Err(Error::UnknownCluster(name.to_string()));
        }
        Ok(())
    }

    const SELECT: &'static str =
        "SELECT c.name, c.labels, c.path_override, c.agent_version, c.last_seen_ms, c.status,
            p.commit_sha, p.generation, p.allow_mass_prune
         FROM clusters c LEFT JOIN pins p ON p.cluster = c.name";

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClusterRecord> {
        let labels: String = r.get(1)?;
        let status: Option<Vec<u8>> = r.get(5)?;
        let commit: Option<String> = r.get(6)?;
        let generation: Option<i64> = r.get(7)?;
        Ok(ClusterRecord {
            name: r.get(0)?,
            labels: serde_json::from_str(&labels).unwrap_or_default(),
            path_override: r.get(2)?,
            agent_version: r.get(3)?,
            last_seen_ms: r.get(4)?,
            status: status.and_then(|b| StatusReport::decode(b.as_slice()).ok()),
            pin: commit
                .and_then(|c| Commit::parse(&c).ok())
                .zip(generation.map(|g| g as u64)),
            allow_mass_prune: r.get::<_, Option<bool>>(8)?.unwrap_or(false),
        })
    }

    pub fn clusters(&self) -> Result<Vec<ClusterRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!("{} ORDER BY c.name", Self::SELECT))
            .map_err(db("list clusters"))?;
        let rows = stmt
            .query_map([], Self::row)
            .map_err(db("list clusters"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db("list clusters"))?;
        Ok(rows)
    }

    pub fn cluster(&self, name: &str) -> Result<Option<ClusterRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!("{} WHERE c.name = ?1", Self::SELECT))
            .map_err(db("read cluster"))?;
        stmt.query_row([name], Self::row)
            .optional()
            .map_err(db("read cluster"))
    }

    /// Pins clusters to a commit, all or none, appending one ledger entry
    /// per cluster whose pin changes. Re-pinning to the same commit changes
    /// nothing and records nothing.
    pub fn pin(&self, change: &PinChange<'_>, now_ms: i64) -> Result<Vec<LedgerEntry>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("pin"))?;
        let entries = pin_in(&tx, change, now_ms)?;
        tx.commit().map_err(db("pin"))?;
        Ok(entries)
    }

    /// Creates a rollout unless one of its clusters is in an active rollout.
    pub fn create_rollout(
        &self,
        spec: &str,
        state: &str,
        clusters: &[String],
        actor: &str,
        now_ms: i64,
    ) -> Result<String> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("create a rollout"))?;
        {
            let mut stmt = tx
                .prepare("SELECT id, state FROM rollouts WHERE active = 1")
                .map_err(db("read rollouts"))?;
            let active = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .map_err(db("read rollouts"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db("read rollouts"))?;
            for (id, state) in active {
                let st: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
                let theirs: std::collections::HashSet<&str> = st["clusters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                let shared: Vec<String> = clusters
                    .iter()
                    .filter(|c| theirs.contains(c.as_str()))
                    .cloned()
                    .collect();
                if !shared.is_empty() {
                    return Err(Error::Overlap {
                        rollout: format!("r{id}"),
                        clusters: shared,
                    });
                }
            }
        }
        tx.execute(
            "INSERT INTO rollouts (spec, state, active, actor, created_ms, updated_ms) VALUES (?1, ?2, 1, ?3, ?4, ?4)",
            params![spec, state, actor, now_ms],
        )
        .map_err(db("create a rollout"))?;
        let id = format!("r{}", tx.last_insert_rowid());
        tx.commit().map_err(db("create a rollout"))?;
        Ok(id)
    }

    /// Rollouts, newest first (only active ones if asked).
    pub fn rollouts(&self, active_only: bool) -> Result<Vec<RolloutRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, spec, state, actor, created_ms, updated_ms FROM rollouts WHERE active = 1 OR ?1 = 0 ORDER BY id DESC",
            )
            .map_err(db("read rollouts"))?;
        let rows = stmt
            .query_map([active_only], rollout_row)
            .map_err(db("read rollouts"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db("read rollouts"))?;
        Ok(rows)
    }

    pub fn rollout(&self, id: &str) -> Result<RolloutRecord> {
        let n: i64 = id
            .strip_prefix('r')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::UnknownRollout(id.to_string()))?;
        let conn = self.conn();
        conn.query_row(
            "SELECT id, spec, state, actor, created_ms, updated_ms FROM rollouts WHERE id = ?1",
            [n],
            rollout_row,
        )
        .optional()
        .map_err(db("read a rollout"))?
        .ok_or_else(|| Error::UnknownRollout(id.to_string()))
    }

    /// The active rollout each of these clusters belongs to (those in none
    /// are absent).
    pub fn active_rollouts_of(
        &self,
        clusters: &[String],
    ) -> Result<std::collections::HashMap<String, String>> {
        let mut found = std::collections::HashMap::new();
        let wanted: std::collections::HashSet<&str> = clusters.iter().map(String::as_str).collect();
        // Each active rollout's state is parsed once, however many clusters.
        for r in self.rollouts(true)? {
            let st: serde_json::Value = serde_json::from_str(&r.state).unwrap_or_default();
            for c in st["clusters"].as_array().into_iter().flatten() {
                if let Some(name) = c["name"].as_str().filter(|n| wanted.contains(n)) {
                    found
                        .entry(name.to_string())
                        .or_insert_with(|| r.id.clone());
                }
            }
        }
        Ok(found)
    }

    /// Persists one rollout transition with its pins and events, atomically.
    pub fn advance(
        &self,
        step: &Advance<'_>,
        now_ms: i64,
    ) -> Result<(Vec<LedgerEntry>, Vec<EventRecord>)> {
        let n: i64 = step
            .id
            .strip_prefix('r')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::UnknownRollout(step.id.to_string()))?;
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("advance a rollout"))?;
        let mut entries = vec![];
        for (cluster, commit, reason) in step.pins {
            let names = [cluster.clone()];
            entries.extend(pin_in(
                &tx,
                &PinChange {
                    clusters: &names,
                    commit,
                    actor: step.actor,
                    reason,
                    rollout: step.id,
                    allow_mass_prune: false,
                },
                now_ms,
            )?);
        }
        let mut events = vec![];
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (at_ms, rollout, cluster, message, actor) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(db("record an event"))?;
        for (cluster, message) in step.events {
            insert
                .execute(params![now_ms, step.id, cluster, message, step.actor])
                .map_err(db("record an event"))?;
            events.push(EventRecord {
                id: tx.last_insert_rowid(),
                at_ms: now_ms,
                rollout: step.id.to_string(),
                cluster: cluster.clone(),
                message: message.clone(),
                actor: step.actor.to_string(),
            });
        }
        drop(insert);
        tx.execute(
            "UPDATE rollouts SET state = ?2, active = ?3, updated_ms = ?4 WHERE id = ?1",
            params![n, step.state, step.active, now_ms],
        )
        .map_err(db("advance a rollout"))?;
        tx.commit().map_err(db("advance a rollout"))?;
        Ok((entries, events))
    }

    /// Stored events after `after_id`, oldest first.
    pub fn events(
        &self,
        rollout: Option<&str>,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<EventRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, at_ms, rollout, cluster, message, actor FROM events
                 WHERE id > ?1 AND (?2 IS NULL OR rollout = ?2) ORDER BY id LIMIT ?3",
            )
            .map_err(db("read events"))?;
        let rows = stmt
            .query_map(params![after_id, rollout, limit], |r| {
                Ok(EventRecord {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    rollout: r.get(2)?,
                    cluster: r.get(3)?,
                    message: r.get(4)?,
                    actor: r.get(5)?,
                })
            })
            .map_err(db("read events"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db("read events"))?;
        Ok(rows)
    }

    /// Ledger entries, newest first.
    pub fn history(&self, cluster: Option<&str>, limit: u32) -> Result<Vec<LedgerEntry>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, at_ms, actor, cluster, from_commit, to_commit, reason, rollout FROM ledger
                 WHERE ?1 IS NULL OR cluster = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(db("read the ledger"))?;
        let rows = stmt
            .query_map(params![cluster, limit], |r| {
                Ok(LedgerEntry {
                    id: r.get(0)?,
                    at_unix_ms: r.get(1)?,
                    actor: r.get(2)?,
                    cluster: r.get(3)?,
                    from_commit: r.get(4)?,
                    to_commit: r.get(5)?,
                    reason: r.get(6)?,
                    rollout: r.get(7)?,
                })
            })
            .map_err(db("read the ledger"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db("read the ledger"))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(c: char) -> Commit {
        Commit::parse(&c.to_string().repeat(40)).unwrap()
    }

    #[test]
    fn pins_and_ledger_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.hello("a", Some(&BTreeMap::new()), "v", None, 1).unwrap();
            let names = vec!["a".to_string()];
            fn change<'a>(names: &'a [String], c: &'a Commit) -> PinChange<'a> {
                PinChange {
                    clusters: names,
                    commit: c,
                    actor: "me",
                    reason: "why",
                    rollout: "",
                    allow_mass_prune: false,
                }
            }
            assert_eq!(s.pin(&change(&names, &commit('a')), 2).unwrap().len(), 1);
            assert!(
                s.pin(&change(&names, &commit('a')), 3).unwrap().is_empty(),
                "same commit: no entry"
            );
            assert_eq!(
                s.pin(&change(&names, &commit('b')), 4).unwrap()[0].from_commit,
                commit('a').to_string()
            );
        }
        let s = Store::open(dir.path()).unwrap();
        let c = s.cluster("a").unwrap().unwrap();
        assert_eq!(c.pin, Some((commit('b'), 2)));
        assert_eq!(s.history(Some("a"), 10).unwrap().len(), 2);
    }

    #[test]
    fn pin_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.hello("a", Some(&BTreeMap::new()), "v", None, 1).unwrap();
        let names = vec!["a".to_string(), "ghost".to_string()];
        let err = s
            .pin(
                &PinChange {
                    clusters: &names,
                    commit: &commit('a'),
                    actor: "me",
                    reason: "",
                    rollout: "",
                    allow_mass_prune: false,
                },
                2,
            )
            .unwrap_err();
        assert!(matches!(err, Error::UnknownCluster(ref c) if c == "ghost"));
        assert_eq!(s.cluster("a").unwrap().unwrap().pin, None);
        assert!(s.history(None, 10).unwrap().is_empty());
    }
}
