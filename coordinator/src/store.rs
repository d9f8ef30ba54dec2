//! The coordinator's durable state behind one trait: clusters and their
//! reported status, pins and the append-only pin ledger, rollouts with their
//! per-cluster membership, rollout events, join and API tokens.
//!
//! Every pin change and its ledger entry are written in one transaction, so
//! a crash never leaves a pin without its record or a record without its
//! pin; a rollout transition is persisted together with the pins it makes.
//! Whether a cluster may be pinned by hand is decided inside the pin's own
//! transaction. Implementations never block the async runtime and never
//! talk to anything but their database.

pub mod postgres;
pub mod sqlite;
pub mod timed;

use ferry_proto::Commit;
use ferry_proto::ledger::{Event, LedgerEntry};
use ferry_proto::rollout::{ClusterProgress, Rollout, Spec, State};
use ferry_proto::v1::StatusReport;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A backend's own error, shared so one failed commit can be told to every
/// caller whose work it carried.
pub type BackendError = Arc<dyn std::error::Error + Send + Sync>;

/// A status report as the backends store it: (encoded, phase, health).
pub(crate) type Encoded = (Vec<u8>, i32, i32);

pub(crate) fn encoded(status: StatusReport) -> Encoded {
    let (phase, health) = (status.phase, status.health);
    (prost::Message::encode_to_vec(&status), phase, health)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened, migrated, read or written.
    #[error("database: {what}: {source}")]
    Db {
        what: String,
        #[source]
        source: BackendError,
    },
    /// The store's owner is gone (the coordinator is shutting down).
    #[error("the store is closed")]
    Closed,
    /// A cluster nobody added.
    #[error("unknown cluster {0:?} (add it with `ferry cluster add`)")]
    UnknownCluster(String),
    /// A rollout that would share clusters with an active one.
    #[error("rollout {rollout} is already moving cluster(s) {}", .clusters.join(", "))]
    Overlap {
        rollout: String,
        clusters: Vec<String>,
    },
    /// A manual pin of a cluster an active rollout is moving.
    #[error(
        "cluster {cluster} is in active rollout {rollout}; pause or abort it, or pin with --force"
    )]
    InRollout { cluster: String, rollout: String },
    /// A join token that is unknown, expired or already used.
    #[error("the join token is {0}")]
    JoinToken(&'static str),
    /// A revoked cluster.
    #[error("cluster {0:?} is revoked")]
    Revoked(String),
    /// A certificate from before the cluster was last revoked or re-added.
    #[error(
        "this certificate of cluster {cluster} was issued before the cluster was revoked or added again: enroll with a new join token (`ferry cluster add {cluster}`)"
    )]
    StaleCertificate { cluster: String },
    /// A rollout id that does not exist.
    #[error("unknown rollout {0:?}")]
    UnknownRollout(String),
    /// A site name that does not exist.
    #[error("unknown site {0:?} (see `ferry sites`)")]
    UnknownSite(String),
    /// A site name already taken.
    #[error("site {0:?} exists already (remove it first to change it)")]
    SiteExists(String),
    /// The database was written by a newer coordinator.
    #[error("the database schema is version {found}, newer than this coordinator's {known}")]
    TooNew { found: i64, known: i64 },
    /// A stored value this coordinator cannot read.
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
    /// The store's settings cannot work (named in the message).
    #[error("{0}")]
    Config(String),
    /// A write made under a lease this coordinator no longer holds
    /// (another replica took it over): refused, nothing written.
    #[error("coordinator {holder} no longer holds the {lease} lease; nothing was written")]
    Fenced { lease: String, holder: String },
}

impl Error {
    /// The same failure for another of the callers one failed batch
    /// answers: a database error or a closed store (no other error fails a
    /// whole batch).
    pub(crate) fn again(&self) -> Error {
        match self {
            Error::Db { what, source } => Error::Db {
                what: what.clone(),
                source: source.clone(),
            },
            _ => Error::Closed,
        }
    }

    /// Whether trying again later may succeed (the database is busy or
    /// unreachable), as opposed to a refusal that will stand.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Db { .. } | Error::Closed)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    /// The rollout that made the pin, if one did.
    pub pin_rollout: Option<String>,
    /// A session with a coordinator that is alive, as the store knows
    /// (only a store replicas share knows; this coordinator's own sessions
    /// are in the hub).
    pub live_session: bool,
}

/// What a cluster's assignment is made of (a cluster record without its
/// status, cheap to read for thousands at once).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PinnedCluster {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub path_override: Option<String>,
    /// The pinned commit and the assignment generation.
    pub pin: Option<(Commit, u64)>,
    pub allow_mass_prune: bool,
    /// The rollout that made the pin, if one did.
    pub pin_rollout: Option<String>,
}

/// A site: the clusters its selector picks fetch from its Git mirror.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteRecord {
    pub name: String,
    pub mirror_url: String,
    pub selector: String,
    /// The mirror's refs as last reported (name -> commit).
    pub refs: BTreeMap<String, String>,
    /// How many commits it was reported to hold.
    pub commits: u64,
    /// 0: never reported.
    pub reported_ms: i64,
    pub reported_by: String,
}

/// A requested pin change.
#[derive(Clone, Debug)]
pub struct PinChange {
    pub clusters: Vec<String>,
    pub commit: Commit,
    pub actor: String,
    pub reason: String,
    /// The rollout making it; `None` for a manual pin, which is refused for
    /// a cluster inside an active rollout unless `force`.
    pub rollout: Option<String>,
    /// Pin clusters inside active rollouts anyway (the ledger says so).
    pub force: bool,
    /// Let the agent prune past its safety share (this pin only).
    pub allow_mass_prune: bool,
}

/// One rollout transition: its new state, the members that changed, the
/// pins it makes and its events, persisted together.
#[derive(Clone, Debug)]
pub struct Advance {
    pub id: String,
    pub state: State,
    /// Members whose progress changed (all of them is fine, just slower).
    pub changed: Vec<ClusterProgress>,
    pub actor: String,
    /// (cluster, commit, reason)
    pub pins: Vec<(String, Commit, String)>,
    /// (cluster or "", message)
    pub events: Vec<(String, String)>,
    /// The lease the writer must still hold for the transition to be
    /// written (the rollout driver's; `None` for an operator's control).
    pub fence: Option<Fence>,
}

/// A lease held, as a write presents it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fence {
    pub lease: String,
    pub holder: String,
    /// The token the lease was granted with; a takeover moves it on.
    pub token: i64,
}

/// The answer to asking for a lease.
#[derive(Clone, Debug, PartialEq)]
pub enum Lease {
    /// Held by the asker until the TTL runs out, with this fencing token.
    Held(i64),
    /// Held by another coordinator (named).
    Elsewhere(String),
}

/// The coordinator's durable state. One implementation per database.
#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a Hello from an enrolled cluster: agent version and state.
    /// The certificate's identity generation must be the cluster's current
    /// one (a revoked or re-added cluster's older certificates are refused).
    /// Labels are the operator's (set by `cluster add`), never the agent's,
    /// except in insecure dev mode (no certificate) where `declared` labels
    /// create the cluster.
    async fn hello(
        &self,
        name: &str,
        certificate_generation: Option<i64>,
        declared: Option<BTreeMap<String, String>>,
        agent_version: &str,
        status: Option<StatusReport>,
        now_ms: i64,
    ) -> Result<()>;

    /// Records that the cluster's session that said hello at `hello_ms`
    /// ended here (unless a newer session, here or on another replica,
    /// took its place). `hello` records a session as held by this
    /// coordinator, for replicas sharing the store to know it is connected.
    async fn session_ended(&self, name: &str, hello_ms: i64) -> Result<()> {
        let _ = (name, hello_ms);
        Ok(())
    }

    /// Creates (or re-admits) a cluster with its labels and a join token.
    async fn add_cluster(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        token_hash: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<()>;

    /// Uses a join token once; returns its cluster and the identity
    /// generation its certificate must carry.
    async fn redeem(&self, token_hash: &str, now_ms: i64) -> Result<(String, i64)>;

    /// Refuses the cluster from now on, and every certificate it holds.
    async fn revoke(&self, name: &str, now_ms: i64) -> Result<()>;

    /// Whether a certificate of `generation` still speaks for the cluster;
    /// returns the current generation.
    async fn check_certificate(&self, name: &str, generation: Option<i64>) -> Result<i64>;

    async fn create_token(&self, hash: &str, name: &str, role: &str, now_ms: i64) -> Result<()>;

    /// (name, role) of a token, by its hash.
    async fn token(&self, hash: &str) -> Result<Option<(String, String)>>;

    async fn token_count(&self) -> Result<i64>;

    /// Stores a cluster's latest full status.
    async fn report(&self, name: &str, status: StatusReport, now_ms: i64) -> Result<()>;

    /// Notes that a cluster was heard from.
    async fn seen(&self, name: &str, now_ms: i64) -> Result<()>;

    /// Stores many clusters' reports (or, without one, heartbeats) at once:
    /// (cluster, report, time) each, answered in order.
    async fn report_many(&self, beats: Vec<(String, Option<StatusReport>, i64)>)
    -> Vec<Result<()>>;

    async fn set_path_override(&self, name: &str, path: Option<String>) -> Result<()>;

    /// Every cluster, by name.
    async fn clusters(&self) -> Result<Vec<ClusterRecord>>;

    /// Every cluster's name and labels (cheap: no status), by name.
    async fn cluster_labels(&self) -> Result<Vec<(String, BTreeMap<String, String>)>>;

    /// Up to `limit` clusters named after `after` (by name).
    async fn clusters_page(&self, after: &str, limit: u32) -> Result<Vec<ClusterRecord>>;

    async fn cluster(&self, name: &str) -> Result<Option<ClusterRecord>>;

    /// These clusters, by name (unknown names are left out).
    async fn clusters_named(&self, names: Vec<String>) -> Result<Vec<ClusterRecord>>;

    /// What the assignments of these clusters are made of (unknown names
    /// are left out).
    async fn pinned(&self, clusters: Vec<String>) -> Result<Vec<PinnedCluster>>;

    /// Pins clusters to a commit, all or none, appending one ledger entry
    /// per cluster whose pin changes. Re-pinning to the same commit changes
    /// nothing and records nothing.
    async fn pin(&self, change: PinChange, now_ms: i64) -> Result<Vec<LedgerEntry>>;

    /// Ledger entries, newest first.
    async fn history(&self, cluster: Option<&str>, limit: u32) -> Result<Vec<LedgerEntry>>;

    /// Creates a rollout unless one of its clusters is in an active one.
    async fn create_rollout(
        &self,
        spec: Spec,
        state: State,
        actor: &str,
        now_ms: i64,
    ) -> Result<Rollout>;

    /// Rollouts, newest first (only active ones if asked).
    async fn rollouts(&self, active_only: bool) -> Result<Vec<Rollout>>;

    async fn rollout(&self, id: &str) -> Result<Rollout>;

    /// Persists one rollout transition with its pins and events, atomically.
    async fn advance(&self, step: Advance, now_ms: i64) -> Result<(Vec<LedgerEntry>, Vec<Event>)>;

    /// Stored events after `after_id`, oldest first.
    async fn events(&self, rollout: Option<&str>, after_id: i64, limit: u32) -> Result<Vec<Event>>;

    /// Records who signed a commit, as the coordinator's verify keys named
    /// the key; the ledger shows it beside pins of that commit.
    async fn record_signer(&self, commit: &Commit, signer: &str, now_ms: i64) -> Result<()>;

    /// Creates a site (refused if the name is taken).
    async fn add_site(&self, site: SiteRecord, now_ms: i64) -> Result<()>;

    /// Removes a site and what it knew of its mirror.
    async fn remove_site(&self, name: &str) -> Result<SiteRecord>;

    /// Every site, by name.
    async fn sites(&self) -> Result<Vec<SiteRecord>>;

    /// Replaces what a site's mirror is known to hold: its refs and every
    /// commit (newest first), as `how` reported them.
    async fn report_mirror(
        &self,
        site: &str,
        refs: BTreeMap<String, String>,
        commits: Vec<String>,
        how: &str,
        now_ms: i64,
    ) -> Result<SiteRecord>;

    /// The sites whose mirror holds `commit`.
    async fn sites_holding(&self, commit: &Commit) -> Result<Vec<String>>;

    /// Keeps what a site's own coordinator exported (encoded), unless an
    /// export at least as new is kept already (then `Ok(false)`).
    async fn import_site_status(
        &self,
        site: &str,
        exported_ms: i64,
        encoded: Vec<u8>,
        now_ms: i64,
    ) -> Result<bool>;

    /// Every site's last imported status: (site, imported_ms, encoded).
    async fn site_statuses(&self) -> Result<Vec<(String, i64, Vec<u8>)>>;

    /// The fleet counted: clusters by their last phase and health, rollouts
    /// by phase (for metrics; cheap at any fleet size).
    async fn summary(&self) -> Result<Summary>;

    /// What other coordinators sharing this database change, as they
    /// change it; `None` when no other coordinator can share it.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// Asks the other coordinators for a preview of `cluster` (an encoded
    /// `PreviewRequest`); `false` when no other coordinator can share the
    /// store (nobody else to ask).
    async fn relay_preview(&self, cluster: &str, request: Vec<u8>) -> Result<bool> {
        let _ = (cluster, request);
        Ok(false)
    }

    /// Stores the answer (an encoded `Preview`) to a preview another
    /// coordinator relayed, for it to take.
    async fn answer_relayed(&self, id: &str, answer: Vec<u8>) -> Result<()> {
        let _ = (id, answer);
        Ok(())
    }

    /// Takes (and deletes) the stored answer to a relayed preview.
    async fn take_relayed(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let _ = id;
        Ok(None)
    }

    /// Hands a rollout command (encoded) to whichever coordinator drives
    /// rollouts, under an id unique across replicas; `false` when no other
    /// coordinator can share the store (nobody else to hand it to).
    async fn relay_command(&self, id: &str, request: Vec<u8>) -> Result<bool> {
        let _ = (id, request);
        Ok(false)
    }

    /// Takes a relayed command to carry it out, for `taker`: `None` when
    /// it was taken already or withdrawn (each is carried out at most once).
    async fn take_command(&self, id: &str, taker: &str) -> Result<Option<Vec<u8>>> {
        let _ = (id, taker);
        Ok(None)
    }

    /// The relayed commands nobody took, asked within the last `within_ms`
    /// (by the database's clock), oldest first.
    async fn untaken_commands(&self, within_ms: i64) -> Result<Vec<String>> {
        let _ = within_ms;
        Ok(vec![])
    }

    /// Stores the answer to a relayed command and tells its asker.
    async fn answer_command(&self, id: &str, answer: Vec<u8>) -> Result<()> {
        let _ = (id, answer);
        Ok(())
    }

    /// The asker: takes the answer to its command, if there is one yet
    /// (the command is then forgotten).
    async fn command_answer(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let _ = id;
        Ok(None)
    }

    /// The asker gives up: `true` when nobody had taken the command (it
    /// never will be carried out), `false` when it was taken.
    async fn withdraw_command(&self, id: &str) -> Result<bool> {
        let _ = id;
        Ok(true)
    }

    /// Takes, or keeps, the lease `name` for `holder` for `ttl_ms` more
    /// (by the database's clock). A backend no other coordinator can share
    /// grants every lease to whoever asks.
    async fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<Lease> {
        let _ = (name, holder, ttl_ms);
        Ok(Lease::Held(0))
    }
}

/// What another coordinator on the same database changed, for this one to
/// act on (its own changes it acts on as it makes them).
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// These clusters' assignments changed (a pin, a path): push them.
    Assignments(Vec<String>),
    /// These clusters' sessions must end (revoked, or added again).
    Closed(Vec<String>),
    /// Sites were added or removed: read them again (assignments name
    /// their mirrors).
    Sites,
    /// Another replica asks for a preview of a cluster whose session may
    /// be here (an encoded `PreviewRequest`, its id the asker's).
    Preview { cluster: String, request: Vec<u8> },
    /// The answer to a preview this replica relayed is stored, under this
    /// id ([`Store::take_relayed`]).
    PreviewAnswered(String),
    /// A replica that does not drive rollouts relayed a rollout command
    /// under this id ([`Store::take_command`]), for the one that does.
    Command(String),
    /// The command relayed under this id is answered
    /// ([`Store::command_answer`]).
    CommandAnswered(String),
    /// These clusters' state changed through another replica (a report
    /// stored, a session opened or ended): rollouts read them again.
    Touched(Vec<String>),
    /// Changes may have been missed (the follower lost its connection):
    /// push every connected cluster its assignment again.
    Resync,
}

/// Counts for metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// (phase, health, clusters) of enrolled, unrevoked clusters, by the
    /// wire enums' values.
    pub clusters: Vec<(i32, i32, u64)>,
    /// (phase as stored, rollouts).
    pub rollouts: Vec<(String, u64)>,
}

/// A rollout id (`r12`) as its row number.
pub fn rollout_number(id: &str) -> Result<i64> {
    id.strip_prefix('r')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::UnknownRollout(id.to_string()))
}

/// The migrations a database at schema `version` still needs, numbered
/// from 1; a schema newer than `migrations` know is refused.
pub(crate) fn pending<'a>(
    version: i64,
    migrations: &'a [&'a str],
) -> Result<impl Iterator<Item = (usize, &'a str)>> {
    let known = migrations.len() as i64;
    if version > known {
        return Err(Error::TooNew {
            found: version,
            known,
        });
    }
    Ok(migrations
        .iter()
        .enumerate()
        .skip(version as usize)
        .map(|(i, sql)| (i + 1, *sql)))
}

/// Whether a cluster's identity, as stored (`(revoked_ms, generation)`,
/// `None` for no such cluster), may be served to a certificate of
/// `generation` (`None`: no check, dev mode); its current generation.
pub(crate) fn identity_verdict(
    name: &str,
    stored: Option<(Option<i64>, i64)>,
    generation: Option<i64>,
) -> Result<i64> {
    match stored {
        None => Err(Error::UnknownCluster(name.to_string())),
        Some((Some(_), _)) => Err(Error::Revoked(name.to_string())),
        Some((None, current)) => match generation {
            Some(g) if g != current => Err(Error::StaleCertificate {
                cluster: name.to_string(),
            }),
            _ => Ok(current),
        },
    }
}

/// Whether a join token, as stored (its cluster, expiry, use and the
/// cluster's revocation), may be redeemed at `now_ms`.
pub(crate) fn redeemable(
    cluster: &str,
    expires_ms: i64,
    used_ms: Option<i64>,
    revoked_ms: Option<i64>,
    now_ms: i64,
) -> Result<()> {
    if used_ms.is_some() {
        return Err(Error::JoinToken("already used"));
    }
    if expires_ms < now_ms {
        return Err(Error::JoinToken("expired"));
    }
    if revoked_ms.is_some() {
        return Err(Error::Revoked(cluster.to_string()));
    }
    Ok(())
}

/// What a stored value becomes when this coordinator cannot read it.
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

/// Labels as stored (a JSON object).
pub(crate) fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).expect("labels serialize")
}

/// Stored labels (a JSON object); unreadable ones read as none.
pub(crate) fn labels_of(json: &str) -> BTreeMap<String, String> {
    serde_json::from_str(json).unwrap_or_default()
}

/// A stored pin (commit and generation), when there is one.
pub(crate) fn pin_of(commit: Option<String>, generation: Option<i64>) -> Option<(Commit, u64)> {
    commit
        .and_then(|c| Commit::parse(&c).ok())
        .zip(generation.map(|g| g as u64))
}

/// The reason a pin's ledger entries carry, or the refusal of a manual pin
/// that would move a cluster an active rollout is moving. `inside` maps
/// the pinned clusters that are in an active rollout to it (`None` for a
/// rollout's own pin, which is never refused).
pub(crate) fn pin_reason(
    change: &PinChange,
    inside: Option<&BTreeMap<String, String>>,
) -> Result<String> {
    let mut reason = change.reason.trim().to_string();
    if let Some(inside) = inside {
        if !change.force
            && let Some((cluster, rollout)) = change
                .clusters
                .iter()
                .find_map(|c| inside.get(c).map(|r| (c, r)))
        {
            return Err(Error::InRollout {
                cluster: cluster.clone(),
                rollout: rollout.clone(),
            });
        }
        let forced: std::collections::BTreeSet<&String> = inside.values().collect();
        for r in forced {
            reason = format!("{reason} [forced during rollout {r}]")
                .trim()
                .to_string();
        }
    }
    if change.allow_mass_prune {
        reason = format!("{reason} [mass prune allowed]").trim().to_string();
    }
    Ok(reason)
}

/// Refuses a rollout whose clusters are in an active one (`inside`:
/// cluster -> its active rollout).
pub(crate) fn refuse_overlap(state: &State, inside: &BTreeMap<String, String>) -> Result<()> {
    let mut shared: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &state.clusters {
        if let Some(r) = inside.get(&c.name) {
            shared.entry(r.clone()).or_default().push(c.name.clone());
        }
    }
    match shared.into_iter().next() {
        Some((rollout, clusters)) => Err(Error::Overlap { rollout, clusters }),
        None => Ok(()),
    }
}

/// A rollout's row as stored.
pub(crate) struct RolloutRow {
    pub number: i64,
    pub spec: String,
    pub phase: String,
    pub wave: i64,
    pub wave_started_ms: i64,
    pub baked_since_ms: i64,
    pub approved: String,
    pub message: String,
    pub actor: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A rollout member's row as stored.
pub(crate) struct MemberRow {
    pub name: String,
    pub wave: i64,
    pub previous: String,
    pub phase: String,
    pub pinned_ms: i64,
    pub reason: String,
}

/// A rollout from its stored row and members (in position order).
pub(crate) fn rollout_of(row: RolloutRow, members: Vec<MemberRow>) -> Result<Rollout> {
    use ferry_proto::rollout::{ClusterPhase, RolloutPhase};
    let id = format!("r{}", row.number);
    let spec: Spec =
        serde_json::from_str(&row.spec).map_err(|e| corrupt(&format!("rollout {id} spec"), e))?;
    let phase = RolloutPhase::parse(&row.phase)
        .ok_or_else(|| corrupt(&format!("rollout {id} phase"), &row.phase))?;
    let approved = serde_json::from_str(&row.approved)
        .map_err(|e| corrupt(&format!("rollout {id} approvals"), e))?;
    let clusters = members
        .into_iter()
        .map(|m| {
            Ok(ClusterProgress {
                phase: ClusterPhase::parse(&m.phase).ok_or_else(|| {
                    corrupt(&format!("rollout {id} cluster {}", m.name), &m.phase)
                })?,
                previous: Commit::parse_optional(&m.previous)
                    .map_err(|e| corrupt(&format!("rollout {id} cluster {}", m.name), e))?,
                name: m.name,
                wave: m.wave as usize,
                pinned_ms: m.pinned_ms,
                reason: m.reason,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Rollout {
        id,
        spec,
        state: State {
            phase,
            wave: row.wave as usize,
            wave_started_ms: row.wave_started_ms,
            baked_since_ms: row.baked_since_ms,
            approved,
            clusters,
            message: row.message,
        },
        actor: row.actor,
        created_ms: row.created_ms,
        updated_ms: row.updated_ms,
    })
}

/// A site from its stored columns (`refs` a JSON object).
pub(crate) fn site_of(
    name: String,
    mirror_url: String,
    selector: String,
    refs: &str,
    commits: i64,
    reported_ms: i64,
    reported_by: String,
) -> Result<SiteRecord> {
    let refs =
        serde_json::from_str(refs).map_err(|e| corrupt(&format!("refs of site {name}"), e))?;
    Ok(SiteRecord {
        name,
        mirror_url,
        selector,
        refs,
        commits: commits as u64,
        reported_ms,
        reported_by,
    })
}
