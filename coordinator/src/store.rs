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
const MIGRATIONS: &[&str] = &[r#"
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
"#];

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
}

/// A requested pin change.
pub struct PinChange<'a> {
    pub clusters: &'a [String],
    pub commit: &'a Commit,
    pub actor: &'a str,
    pub reason: &'a str,
    pub rollout: &'a str,
}

pub struct Store {
    conn: Mutex<Connection>,
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

    /// Records a Hello: creates the cluster on first sight, refreshes its
    /// labels, agent version and state.
    pub fn hello(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        agent_version: &str,
        status: Option<&StatusReport>,
        now_ms: i64,
    ) -> Result<()> {
        let labels = serde_json::to_string(labels).expect("labels serialize");
        let status = status.map(Message::encode_to_vec);
        self.conn()
            .execute(
                "INSERT INTO clusters (name, labels, agent_version, first_seen_ms, last_seen_ms, status)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)
                 ON CONFLICT(name) DO UPDATE SET labels = ?2, agent_version = ?3, last_seen_ms = ?4,
                     status = COALESCE(?5, status)",
                params![name, labels, agent_version, now_ms, status],
            )
            .map_err(db("record hello"))?;
        Ok(())
    }

    /// Stores a cluster's latest full status.
    pub fn report(&self, name: &str, status: &StatusReport, now_ms: i64) -> Result<()> {
        let n = self
            .conn()
            .execute(
                "UPDATE clusters SET status = ?2, last_seen_ms = ?3 WHERE name = ?1",
                params![name, status.encode_to_vec(), now_ms],
            )
            .map_err(db("record status"))?;
        if n == 0 {
            return Err(Error::UnknownCluster(name.to_string()));
        }
        Ok(())
    }

    /// Notes that a cluster was heard from.
    pub fn seen(&self, name: &str, now_ms: i64) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE clusters SET last_seen_ms = ?2 WHERE name = ?1",
                params![name, now_ms],
            )
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
            p.commit_sha, p.generation
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
        let mut entries = vec![];
        for cluster in change.clusters {
            let exists: bool = tx
                .query_row("SELECT 1 FROM clusters WHERE name = ?1", [cluster], |_| {
                    Ok(true)
                })
                .optional()
                .map_err(db("pin"))?
                .unwrap_or(false);
            if !exists {
                return Err(Error::UnknownCluster(cluster.clone()));
            }
            let current: Option<(String, i64)> = tx
                .query_row(
                    "SELECT commit_sha, generation FROM pins WHERE cluster = ?1",
                    [cluster],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db("pin"))?;
            let (from, generation) = current.unwrap_or_default();
            if from == change.commit.as_str() {
                continue;
            }
            tx.execute(
                "INSERT INTO pins (cluster, commit_sha, generation, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(cluster) DO UPDATE SET commit_sha = ?2, generation = ?3, updated_ms = ?4",
                params![cluster, change.commit.as_str(), generation + 1, now_ms],
            )
            .map_err(db("pin"))?;
            tx.execute(
                "INSERT INTO ledger (at_ms, actor, cluster, from_commit, to_commit, reason, rollout)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    now_ms,
                    change.actor,
                    cluster,
                    from,
                    change.commit.as_str(),
                    change.reason,
                    change.rollout
                ],
            )
            .map_err(db("append to the ledger"))?;
            entries.push(LedgerEntry {
                id: tx.last_insert_rowid(),
                at_unix_ms: now_ms,
                actor: change.actor.to_string(),
                cluster: cluster.clone(),
                from_commit: from,
                to_commit: change.commit.to_string(),
                reason: change.reason.to_string(),
                rollout: change.rollout.to_string(),
            });
        }
        tx.commit().map_err(db("pin"))?;
        Ok(entries)
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
            s.hello("a", &BTreeMap::new(), "v", None, 1).unwrap();
            let names = vec!["a".to_string()];
            fn change<'a>(names: &'a [String], c: &'a Commit) -> PinChange<'a> {
                PinChange {
                    clusters: names,
                    commit: c,
                    actor: "me",
                    reason: "why",
                    rollout: "",
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
        s.hello("a", &BTreeMap::new(), "v", None, 1).unwrap();
        let names = vec!["a".to_string(), "ghost".to_string()];
        let err = s
            .pin(
                &PinChange {
                    clusters: &names,
                    commit: &commit('a'),
                    actor: "me",
                    reason: "",
                    rollout: "",
                },
                2,
            )
            .unwrap_err();
        assert!(matches!(err, Error::UnknownCluster(ref c) if c == "ghost"));
        assert_eq!(s.cluster("a").unwrap().unwrap().pin, None);
        assert!(s.history(None, 10).unwrap().is_empty());
    }
}
