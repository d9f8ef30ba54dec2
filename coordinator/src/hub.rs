//! The live agent sessions and what each cluster is assigned. The hub is the
//! only place that pushes assignments: on connect and after every change.
//! It owns no durable state (the store does) and owns every session task,
//! so stopping the coordinator ends and waits for all of them.

use crate::metrics::Metrics;
use crate::store::{PinnedCluster, SiteRecord, Store};
use ferry_proto::Assignment;
use ferry_proto::v1::{CoordinatorMessage, Preview, PreviewRequest, coordinator_message};
use prost::Message;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

/// A session's outbound queue. Its messages are boxed: a queue allocates
/// its slots in blocks of 32, and a block of unboxed messages was several
/// KiB per connected agent.
pub type Outbound = mpsc::Sender<Box<Result<CoordinatorMessage, Status>>>;

struct Session {
    id: u64,
    tx: Outbound,
}

/// How long status reports wait at most for agents to answer the
/// assignments pushed to them ([`Hub::store_reports`]), and how often
/// they look.
const HOLD_REPORTS: std::time::Duration = std::time::Duration::from_secs(1);
const HOLD_LOOK: std::time::Duration = std::time::Duration::from_millis(50);

/// Sessions by cluster name. A new session for a cluster replaces the old
/// one, whose stream then ends.
pub struct Hub {
    pub store: Arc<dyn Store>,
    /// Other coordinators share the store (their sessions are not here).
    shared: bool,
    /// Sets this coordinator's preview ids apart from other replicas'.
    instance: String,
    pub repo_url: String,
    pub path_template: String,
    sessions: Mutex<HashMap<String, Session>>,
    next_id: AtomicU64,
    /// Woken by every status report, so rollouts react at once.
    pub status_changed: tokio::sync::Notify,
    /// Tasks serving sessions and watches; waited for at shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when the coordinator stops: every session task ends.
    pub shutdown: CancellationToken,
    pub metrics: Metrics,
    /// Previews asked of agents and not answered yet: id -> (cluster, answer).
    previews: Mutex<HashMap<String, (String, oneshot::Sender<Preview>)>>,
    /// Sites by name: (mirror URL, selector). A copy of the store's, set
    /// at start and on every change, read for every assignment.
    sites: std::sync::RwLock<Vec<(String, String, ferry_proto::LabelSelector)>>,
    /// Reports and heartbeats received and not stored yet, by cluster (see
    /// [`Hub::store_reports`]).
    unstored: Mutex<HashMap<String, Unstored>>,
    unstored_ready: tokio::sync::Notify,
    /// Clusters pushed an assignment whose agents have not reported since,
    /// and when (see [`Hub::store_reports`]).
    unanswered: Mutex<HashMap<String, tokio::time::Instant>>,
    /// What changed here since the driver last looked (see
    /// [`Hub::take_touched`]).
    touched: Mutex<Touched>,
}

/// Clusters whose stored state or session changed, here or (told by the
/// store) through another replica: a report stored, a pin pushed, a
/// session opened or closed; or (`all`) the sites, or changes missed.
#[derive(Debug, Default)]
pub struct Touched {
    /// Every cluster may have changed (all sessions closed, sites changed).
    pub all: bool,
    pub names: std::collections::HashSet<String>,
}

/// What a cluster's agent said that is not stored yet: its newest report,
/// if any, and the last time it was heard from.
struct Unstored {
    report: Option<ferry_proto::v1::StatusReport>,
    now_ms: i64,
}

/// The site a cluster's labels put it in: (site, mirror URL).
pub type SiteOf = Option<(String, String)>;

impl Hub {
    pub fn new(
        store: Arc<dyn Store>,
        repo_url: String,
        path_template: String,
        metrics: Metrics,
    ) -> Self {
        Hub {
            metrics,
            previews: Mutex::new(HashMap::new()),
            sites: Default::default(),
            unstored: Mutex::new(HashMap::new()),
            unstored_ready: tokio::sync::Notify::new(),
            unanswered: Mutex::new(HashMap::new()),
            touched: Mutex::new(Touched::default()),
            shared: store.changes().is_some(),
            instance: format!("{}.{}", std::process::id(), ferry_proto::now_unix_ms()),
            store,
            repo_url,
            path_template,
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            status_changed: tokio::sync::Notify::new(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Replaces the sites assignments use.
    pub fn set_sites(&self, sites: &[SiteRecord]) {
        let parsed = sites
            .iter()
            .filter_map(|s| {
                let sel = ferry_proto::LabelSelector::parse(&s.selector).ok()?;
                Some((s.name.clone(), s.mirror_url.clone(), sel))
            })
            .collect();
        *self.sites.write().unwrap_or_else(|p| p.into_inner()) = parsed;
        // Any cluster may be in another site now.
        self.touch_all();
    }

    /// Whether any site exists.
    pub fn has_sites(&self) -> bool {
        !self
            .sites
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// The site (and its mirror URL) whose selector picks these labels:
    /// the first by name (`site add` refuses overlapping sites).
    pub fn site_of(&self, labels: &BTreeMap<String, String>) -> SiteOf {
        self.sites
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, _, sel)| sel.matches(labels))
            .map(|(name, url, _)| (name.clone(), url.clone()))
    }

    /// Where a cluster with these labels fetches from: its site's mirror,
    /// or the repository; and the site, if any.
    pub fn source_of(&self, labels: &BTreeMap<String, String>) -> (String, Option<String>) {
        match self.site_of(labels) {
            Some((site, url)) => (url, Some(site)),
            None => (self.repo_url.clone(), None),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session; returns its id for [`Hub::leave`].
    pub fn join(&self, cluster: &str, tx: Outbound) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replaced = self
            .sessions()
            .insert(cluster.to_string(), Session { id, tx });
        self.touch([cluster]);
        if let Some(old) = replaced {
            tracing::info!(
                cluster,
                old = old.id,
                new = id,
                "a new session replaces the old one"
            );
        }
        id
    }

    /// Unregisters a session, unless a newer one already replaced it.
    pub fn leave(&self, cluster: &str, id: u64) {
        let left = {
            let mut s = self.sessions();
            s.get(cluster).is_some_and(|x| x.id == id) && s.remove(cluster).is_some()
        };
        if left {
            self.touch([cluster]);
            self.unanswered().remove(cluster);
        }
    }

    fn unanswered(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::time::Instant>> {
        self.unanswered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that these clusters changed: here, or (told by the store)
    /// through another replica.
    pub fn touch<'a>(&self, clusters: impl IntoIterator<Item = &'a str>) {
        let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        if !t.all {
            t.names.extend(clusters.into_iter().map(str::to_string));
        }
    }

    /// Notes that any cluster may have changed.
    pub fn touch_all(&self) {
        let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        t.all = true;
        t.names.clear();
    }

    /// What changed since the last call. Each change is noted after the
    /// store holds it, so a read of the store after this call sees it.
    pub fn take_touched(&self) -> Touched {
        std::mem::take(&mut *self.touched.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether a cluster is connected: to this coordinator, or, when
    /// replicas share the store, to another that is alive, as the store
    /// knows (`live_session` of its record).
    pub fn reachable(&self, cluster: &str, live_session: bool) -> bool {
        self.connected(cluster) || (self.shared && live_session)
    }

    /// Whether other coordinators share the store.
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// The clusters with a live session here.
    pub fn connected_clusters(&self) -> Vec<String> {
        self.sessions().keys().cloned().collect()
    }

    /// Ends one cluster's session (its stream closes).
    pub fn close(&self, cluster: &str) {
        self.sessions().remove(cluster);
        self.touch([cluster]);
    }

    /// Ends every session (their streams close; agents reconnect).
    pub fn close_all(&self) {
        self.sessions().clear();
        self.touch_all();
    }

    /// Asks a cluster's agent what `req` would change; waits at most
    /// `deadline`. With replicas, a cluster whose session is on another
    /// coordinator is asked through it. `Err` says why there is no answer.
    pub async fn preview(
        &self,
        cluster: &str,
        mut req: PreviewRequest,
        deadline: std::time::Duration,
    ) -> Result<Preview, String> {
        req.id = format!(
            "p{}.{}",
            self.instance,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        self.ask(cluster, req, deadline, self.shared).await
    }

    /// As [`Hub::preview`] for a request another coordinator relayed (its
    /// id kept), asked only of a session here.
    pub async fn preview_here(
        &self,
        cluster: &str,
        req: PreviewRequest,
        deadline: std::time::Duration,
    ) -> Result<Preview, String> {
        self.ask(cluster, req, deadline, false).await
    }

    async fn ask(
        &self,
        cluster: &str,
        req: PreviewRequest,
        deadline: std::time::Duration,
        relay: bool,
    ) -> Result<Preview, String> {
        let id = req.id.clone();
        let (tx, rx) = oneshot::channel();
        self.previews
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), (cluster.to_string(), tx));
        // Ok(true): sent here; Ok(false): to be relayed.
        let here = {
            let sessions = self.sessions();
            match sessions.get(cluster) {
                None if relay => Ok(false),
                None => Err("not previewed: the cluster is not connected".to_string()),
                Some(s) => {
                    s.tx.try_send(Box::new(Ok(CoordinatorMessage {
                        msg: Some(coordinator_message::Msg::Preview(req.clone())),
                    })))
                    .map(|()| true)
                    .map_err(|_| "not previewed: its session is not keeping up".to_string())
                }
            }
        };
        let sent = match here {
            Ok(false) => match self.store.relay_preview(cluster, req.encode_to_vec()).await {
                Ok(true) => Ok(()),
                Ok(false) => Err("not previewed: the cluster is not connected".to_string()),
                Err(e) => Err(format!("not previewed: {e}")),
            },
            Ok(true) => Ok(()),
            Err(e) => Err(e),
        };
        let answer = match sent {
            Err(e) => Err(e),
            Ok(()) => match tokio::time::timeout(deadline, rx).await {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(_)) => Err("not previewed: the session ended".into()),
                Err(_) if relay && !self.connected(cluster) => Err(format!(
                    "not previewed: not connected here, and no other coordinator answered within {} s",
                    deadline.as_secs()
                )),
                Err(_) => Err(format!(
                    "not previewed: no answer within {} s (a busy or older agent)",
                    deadline.as_secs()
                )),
            },
        };
        self.previews
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        answer
    }

    /// Whether this coordinator waits for the answer to preview `id`.
    pub fn awaits_preview(&self, id: &str) -> bool {
        self.previews
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// The answer to a preview relayed through another coordinator.
    pub fn answer_relayed(&self, p: Preview) {
        let pending = self
            .previews
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&p.id);
        match pending {
            Some((_, tx)) => {
                let _ = tx.send(p);
            }
            None => tracing::debug!(id = %p.id, "a relayed answer to no preview asked here"),
        }
    }

    /// An agent's answer to a preview: taken only from the cluster it was
    /// asked of.
    pub fn answer_preview(&self, cluster: &str, p: Preview) {
        let mut pending = self.previews.lock().unwrap_or_else(|p| p.into_inner());
        if pending.get(&p.id).is_some_and(|(c, _)| c == cluster)
            && let Some((_, tx)) = pending.remove(&p.id)
        {
            let _ = tx.send(p);
        } else {
            tracing::debug!(cluster, id = %p.id, "an answer to no preview asked of this cluster");
        }
    }

    /// Takes an agent's status report to store: it supersedes any report of
    /// the same cluster still waiting (its newest state is what counts), so
    /// a burst of reports, or a slow store, costs one write per cluster and
    /// never holds up the session.
    pub fn report(&self, cluster: &str, report: ferry_proto::v1::StatusReport, now_ms: i64) {
        self.hold(cluster, Some(report), now_ms);
    }

    /// Takes an agent's heartbeat to store (with its report, if one waits).
    pub fn heard(&self, cluster: &str, now_ms: i64) {
        self.hold(cluster, None, now_ms);
    }

    fn hold(&self, cluster: &str, report: Option<ferry_proto::v1::StatusReport>, now_ms: i64) {
        if report.is_some() {
            let mut unanswered = self.unanswered();
            if !unanswered.is_empty() {
                unanswered.remove(cluster);
            }
        }
        let superseded = {
            let mut unstored = self.unstored.lock().unwrap_or_else(|p| p.into_inner());
            let u = unstored.entry(cluster.to_string()).or_insert(Unstored {
                report: None,
                now_ms,
            });
            u.now_ms = u.now_ms.max(now_ms);
            report.is_some_and(|r| u.report.replace(r).is_some())
        };
        if superseded {
            self.count_report("superseded");
        }
        self.unstored_ready.notify_one();
    }

    fn count_report(&self, result: &'static str) {
        self.metrics
            .reports
            .get_or_create(&crate::metrics::ReportLabels { result })
            .inc();
    }

    /// Stores what agents reported, a round at a time (every cluster's
    /// newest, all at once: the store batches them), and wakes rollouts
    /// after each round. Runs until the coordinator stops, then stores
    /// what is left.
    ///
    /// Assignments go out first: while agents pushed one are answering it
    /// (an agent reports as soon as it starts on a new commit), a round
    /// waits, up to [`HOLD_REPORTS`]. On busy cores, storing the reports
    /// of the agents a fan-out reached first otherwise takes the CPU the
    /// others' assignments wait for. Held reports coalesce; what is stored
    /// is the same.
    pub async fn store_reports(self: Arc<Self>) {
        loop {
            let stopping = tokio::select! {
                _ = self.shutdown.cancelled() => true,
                _ = self.unstored_ready.notified() => false,
            };
            if !stopping {
                self.answered().await;
            }
            let round =
                std::mem::take(&mut *self.unstored.lock().unwrap_or_else(|p| p.into_inner()));
            if !round.is_empty() {
                let beats: Vec<_> = round
                    .into_iter()
                    .map(|(cluster, u)| (cluster, u.report, u.now_ms))
                    .collect();
                let reported: Vec<(String, bool)> = beats
                    .iter()
                    .map(|(c, r, _)| (c.clone(), r.is_some()))
                    .collect();
                let answers = self.store.report_many(beats).await;
                self.touch(reported.iter().filter(|(_, r)| *r).map(|(c, _)| c.as_str()));
                for ((cluster, report), answer) in reported.into_iter().zip(answers) {
                    match (report, answer) {
                        (true, Ok(())) => self.count_report("stored"),
                        (true, Err(e)) => {
                            self.count_report("failed");
                            tracing::error!(%cluster, error = %e, "storing a status report");
                        }
                        (false, Ok(())) => {}
                        (false, Err(e)) => {
                            tracing::debug!(%cluster, error = %e, "recording a heartbeat")
                        }
                    }
                }
                self.status_changed.notify_one();
            }
            if stopping {
                return;
            }
        }
    }

    /// Returns once every agent pushed an assignment in the last
    /// [`HOLD_REPORTS`] has reported since, or their count stood still for
    /// two looks (agents that had it already, or do not read), or after
    /// [`HOLD_REPORTS`].
    async fn answered(&self) {
        use tokio::time::Instant;
        let until = Instant::now() + HOLD_REPORTS;
        let (mut last, mut still) = (usize::MAX, 0);
        loop {
            let now = Instant::now();
            let waiting = {
                let mut unanswered = self.unanswered();
                if let Some(since) = now.checked_sub(HOLD_REPORTS) {
                    unanswered.retain(|_, pushed| *pushed > since);
                }
                unanswered.len()
            };
            if waiting == last {
                still += 1;
            } else {
                (last, still) = (waiting, 0);
            }
            if waiting == 0 || still == 2 || now >= until {
                return;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(HOLD_LOOK) => {}
            }
        }
    }

    /// Agents pushed an assignment that have not reported since.
    #[cfg(test)]
    fn unanswered_count(&self) -> usize {
        self.unanswered().len()
    }

    /// (sessions, assignments queued in them and not yet sent).
    pub fn session_counts(&self) -> (usize, usize) {
        let sessions = self.sessions();
        let queued = sessions
            .values()
            .map(|s| s.tx.max_capacity() - s.tx.capacity())
            .sum();
        (sessions.len(), queued)
    }

    pub fn connected(&self, cluster: &str) -> bool {
        self.sessions().contains_key(cluster)
    }

    /// The resolved path of a cluster, or why it cannot be resolved.
    pub fn path(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        path_override: Option<&str>,
    ) -> Result<String, ferry_proto::Invalid> {
        match path_override {
            Some(p) => Ok(p.to_string()),
            None => ferry_proto::render_path(&self.path_template, name, labels),
        }
    }

    /// The full assignment of a cluster, if it is pinned and its path resolves.
    pub fn assignment(&self, c: &PinnedCluster) -> Option<Assignment> {
        let (commit, generation) = c.pin.as_ref()?;
        let path = match self.path(&c.name, &c.labels, c.path_override.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(cluster = %c.name, error = %e, "no assignment: the path does not resolve");
                return None;
            }
        };
        let (repo_url, site) = self.source_of(&c.labels);
        Some(Assignment {
            repo_url,
            site,
            commit: commit.clone(),
            path,
            generation: *generation,
            allow_mass_prune: c.allow_mass_prune,
            rollout: c.pin_rollout.clone(),
            labels: c.labels.clone(),
        })
    }

    /// Sends a cluster its current assignment, if it is connected.
    pub async fn push(&self, cluster: &str) {
        self.push_many([cluster]).await;
    }

    /// Sends the connected ones of these clusters their assignments, read
    /// in one go (a pin or wave of thousands fans out at once). Their
    /// agents are expected to answer (see [`Hub::store_reports`]).
    pub async fn push_many<'a>(&self, clusters: impl IntoIterator<Item = &'a str>) {
        self.send_many(clusters, true).await
    }

    /// Sends the connected ones of these clusters their assignments again,
    /// as on connect: most agents have them already and do not answer.
    pub async fn resync<'a>(&self, clusters: impl IntoIterator<Item = &'a str>) {
        self.send_many(clusters, false).await
    }

    async fn send_many<'a>(&self, clusters: impl IntoIterator<Item = &'a str>, answered: bool) {
        let clusters: Vec<&str> = clusters.into_iter().collect();
        // Pushes follow whatever changed a cluster's assignment in the
        // store: a pin, its labels, its site.
        self.touch(clusters.iter().copied());
        let names: Vec<String> = clusters
            .into_iter()
            .filter(|c| self.connected(c))
            .map(str::to_string)
            .collect();
        if names.is_empty() {
            return;
        }
        let t = std::time::Instant::now();
        match self.store.pinned(names).await {
            Ok(pinned) => {
                let read = t.elapsed();
                // Awaited before they are sent: an agent may answer at once.
                if answered {
                    let now = tokio::time::Instant::now();
                    self.unanswered()
                        .extend(pinned.iter().map(|p| (p.name.clone(), now)));
                }
                for p in &pinned {
                    if !self.send(p) && answered {
                        self.unanswered().remove(&p.name);
                    }
                }
                tracing::debug!(
                    clusters = pinned.len(),
                    read_ms = read.as_millis() as u64,
                    send_ms = (t.elapsed() - read).as_millis() as u64,
                    "pushed assignments"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "reading pins to push assignments");
            }
        }
    }

    /// Queues a cluster's assignment in its session; whether it did.
    fn send(&self, record: &PinnedCluster) -> bool {
        let cluster = record.name.as_str();
        let Some(assignment) = self.assignment(record) else {
            return false;
        };
        let mut sessions = self.sessions();
        let Some(session) = sessions.get(cluster) else {
            return false;
        };
        let msg = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Assignment((&assignment).into())),
        };
        // A full queue means the agent is not reading. Dropping the session
        // ends its stream; the agent reconnects and gets a full resync.
        if session.tx.try_send(Box::new(Ok(msg))).is_err() {
            tracing::warn!(
                cluster,
                "the session is not keeping up; closing it to force a resync"
            );
            sessions.remove(cluster);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PinChange;
    use std::time::Duration;
    use tokio::time::Instant;

    /// A hub on a fresh SQLite store whose clusters are pinned.
    async fn hub(dir: &std::path::Path, clusters: &[String]) -> Arc<Hub> {
        let store = crate::store::sqlite::Sqlite::open(dir).await.unwrap();
        for c in clusters {
            store
                .add_cluster(c, Default::default(), &format!("token-{c}"), i64::MAX, 1)
                .await
                .unwrap();
        }
        store
            .pin(
                PinChange {
                    clusters: clusters.to_vec(),
                    commit: ferry_proto::Commit::parse(&"c".repeat(40)).unwrap(),
                    actor: "test".into(),
                    reason: "test".into(),
                    rollout: None,
                    force: false,
                    allow_mass_prune: false,
                },
                1,
            )
            .await
            .unwrap();
        let hub = Arc::new(Hub::new(
            Arc::new(store),
            "https://git.example/fleet.git".into(),
            ferry_proto::DEFAULT_PATH_TEMPLATE.into(),
            Metrics::default(),
        ));
        hub.tasks.spawn(hub.clone().store_reports());
        hub
    }

    /// A session's queue, as its stream reads it.
    type Queue = mpsc::Receiver<Box<Result<CoordinatorMessage, Status>>>;

    /// Connects each cluster (its queue kept, never read); returns the
    /// queues and session ids.
    fn connect(hub: &Hub, clusters: &[String]) -> Vec<(Queue, u64)> {
        clusters
            .iter()
            .map(|c| {
                let (tx, rx) = mpsc::channel(16);
                let id = hub.join(c, tx);
                (rx, id)
            })
            .collect()
    }

    fn syncing() -> ferry_proto::v1::StatusReport {
        ferry_proto::v1::StatusReport {
            target_commit: "c".repeat(40),
            phase: ferry_proto::v1::Phase::Syncing as i32,
            ..Default::default()
        }
    }

    /// Polls the store until the cluster's report is there; returns when.
    async fn stored(hub: &Hub, cluster: &str) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = hub.store.cluster(cluster).await.unwrap().unwrap();
            if c.status.is_some() {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "{cluster}'s report never stored");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// While the agents a pin reached are answering it, reports wait: the
    /// first agent's report is stored once the last one answered.
    #[tokio::test]
    async fn reports_wait_while_pushed_agents_answer() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
        let hub = hub(dir.path(), &names).await;
        let _sessions = connect(&hub, &names);
        hub.push_many(names.iter().map(String::as_str)).await;
        assert_eq!(hub.unanswered_count(), 20);

        hub.report("c00", syncing(), 2);
        let answering = {
            let (hub, names) = (hub.clone(), names.clone());
            tokio::spawn(async move {
                for n in &names[1..] {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    hub.report(n, syncing(), 3);
                }
                Instant::now()
            })
        };
        let at = stored(&hub, "c00").await;
        let last = answering.await.unwrap();
        assert_eq!(hub.unanswered_count(), 0);
        assert!(
            at >= last,
            "c00's report was stored {:?} before the last agent answered",
            last - at
        );
        for n in &names {
            stored(&hub, n).await;
        }
    }

    /// Agents that never answer (they had the assignment already, or do
    /// not read) hold nobody's reports up for long, a session that ends is
    /// not waited for, and a resync expects no answer.
    #[tokio::test]
    async fn an_unanswered_push_holds_reports_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["quiet".to_string(), "other".to_string()];
        let hub = hub(dir.path(), &names).await;
        let sessions = connect(&hub, &names[..1]);
        // As on connect: not awaited.
        hub.resync(["quiet"]).await;
        assert_eq!(hub.unanswered_count(), 0);
        hub.push_many(["quiet"]).await;
        assert_eq!(hub.unanswered_count(), 1);
        let t = Instant::now();
        hub.report("other", syncing(), 2);
        let waited = stored(&hub, "other").await - t;
        assert!(
            waited < HOLD_REPORTS / 2,
            "a report waited {waited:?} for an agent that does not answer"
        );
        assert_eq!(hub.unanswered_count(), 1);
        hub.leave("quiet", sessions[0].1);
        assert_eq!(hub.unanswered_count(), 0);
    }
}
