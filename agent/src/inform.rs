//! What the agent tells its own cluster's operators, who may not have
//! Ferry's CLI: Kubernetes Events (events.k8s.io/v1) for what it did or could
//! not do, and a human-readable status ConfigMap, `ferry-agent-status`, in
//! its namespace:
//!
//! ```text
//! kubectl get events -n ferry-system
//! kubectl get configmap ferry-agent-status -n ferry-system -o yaml
//! ```
//!
//! A ConfigMap rather than a custom resource: it needs nothing installed
//! (no CRD, so no cluster-wide rights, which a namespace-scoped agent does
//! not have, and no CRD upgrades outside Helm's reach), and every `kubectl`
//! shows it. The events regard that ConfigMap, so `kubectl describe` of it
//! lists them too.
//!
//! Writes are few: the ConfigMap only when what it says changes (its
//! `lastSyncTime` is refreshed at most every ten minutes while nothing
//! else does), an event once per distinct thing, repeats of the same
//! thing within six minutes counted on the first (its `series`). Nothing
//! here ever delays a sync: notices queue, and a full queue drops them.

use crate::state::MANAGER;
use ferry_proto::v1::{Health, Phase, StatusReport};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The status ConfigMap (in the agent's namespace).
pub const STATUS_NAME: &str = "ferry-agent-status";

/// The `reportingController` of the agent's events.
pub const CONTROLLER: &str = "ferry.dev/agent";

/// Repeats of an event within this window are counted on the first.
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// How stale `lastSyncTime` may get while nothing else changes.
const REFRESH: Duration = Duration::from_secs(10 * 60);

/// How long a status must hold before it is written: a restart's passing
/// "Pending" is not worth a write, and a burst of reports costs one.
const SETTLE: Duration = Duration::from_secs(1);

/// An event's note is at most 1 kB (the API server's limit).
const NOTE_MAX: usize = 1024;

/// Something worth an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// A new commit applied completely.
    Applied {
        commit: String,
        objects: usize,
        writes: usize,
    },
    /// Objects changed by someone else were put back.
    DriftRepaired { commit: String, writes: usize },
    /// A sync failed; nothing, or not everything, was applied.
    SyncFailed { message: String },
    /// The mass-prune valve held.
    PruneRefused { message: String },
}

impl Notice {
    fn parts(&self) -> (&'static str, &'static str, &'static str, String) {
        match self {
            Notice::Applied {
                commit,
                objects,
                writes,
            } => (
                "Normal",
                "Applied",
                "Sync",
                format!("applied {commit}: {objects} objects, {writes} written"),
            ),
            Notice::DriftRepaired { commit, writes } => (
                "Normal",
                "DriftRepaired",
                "Repair",
                format!("put back {writes} object(s) changed outside Git, as {commit} says"),
            ),
            Notice::SyncFailed { message } => ("Warning", "SyncFailed", "Sync", message.clone()),
            Notice::PruneRefused { message } => {
                ("Warning", "PruneRefused", "Prune", message.clone())
            }
        }
    }
}

/// Where the sync loop drops notices; never blocks.
#[derive(Clone)]
pub struct Notices(mpsc::Sender<Notice>);

impl Notices {
    pub fn channel() -> (Notices, mpsc::Receiver<Notice>) {
        let (tx, rx) = mpsc::channel(64);
        (Notices(tx), rx)
    }

    pub fn send(&self, n: Notice) {
        if self.0.try_send(n).is_err() {
            tracing::debug!("the event queue is full; dropped a notice");
        }
    }
}

/// The status ConfigMap's data for a report.
pub fn status_data(cluster: &str, r: &StatusReport) -> BTreeMap<String, String> {
    let phase = match Phase::try_from(r.phase).unwrap_or_default() {
        Phase::Unspecified => "Unknown",
        Phase::Pending => "Pending",
        Phase::Syncing => "Syncing",
        Phase::Synced => "Synced",
        Phase::Failed => "Failed",
    };
    let health = match Health::try_from(r.health).unwrap_or_default() {
        Health::Unknown => "Unknown",
        Health::Healthy => "Healthy",
        Health::Progressing => "Progressing",
        Health::Degraded => "Degraded",
    };
    let mut d = BTreeMap::new();
    d.insert("cluster".into(), cluster.to_string());
    d.insert("targetCommit".into(), r.target_commit.clone());
    d.insert("appliedCommit".into(), r.applied_commit.clone());
    d.insert("phase".into(), phase.into());
    d.insert("health".into(), health.into());
    d.insert("message".into(), r.message.clone());
    d.insert("objects".into(), r.objects.to_string());
    d.insert("driftCorrections".into(), r.drift_corrections.to_string());
    let problems: Vec<String> = r
        .problems
        .iter()
        .map(|p| {
            let what = [p.object.as_str(), p.source.as_str()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" in ");
            format!("{what}: {}", p.message)
        })
        .collect();
    d.insert("problems".into(), problems.join("\n"));
    d
}

fn rfc3339(unix_ms: i64) -> String {
    Timestamp::from_millisecond(unix_ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// An event already published, to count repeats on.
struct Published {
    name: String,
    count: i32,
    first: Instant,
}

/// Runs until `stop`: writes the status ConfigMap as reports change and
/// publishes notices as events.
pub async fn run(
    mut clients: watch::Receiver<kube::Client>,
    namespace: String,
    cluster: String,
    mut status: watch::Receiver<StatusReport>,
    mut notices: mpsc::Receiver<Notice>,
    stop: CancellationToken,
) {
    // What the cluster holds already: a restarted agent that finds the
    // same status writes nothing.
    let mut written = {
        let api: Api<ConfigMap> = Api::namespaced(clients.borrow().clone(), &namespace);
        match api.get_opt(STATUS_NAME).await {
            Ok(Some(cm)) => cm.data.map(|mut d| {
                d.remove("lastSyncTime");
                d.remove("reportedTime");
                (d, Instant::now())
            }),
            _ => None,
        }
    };
    let mut due: Option<tokio::time::Instant> = None;
    let mut published: HashMap<(String, String), Published> = HashMap::new();
    let regarding = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        namespace: Some(namespace.clone()),
        name: Some(STATUS_NAME.into()),
        ..Default::default()
    };
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + REFRESH, REFRESH);
    loop {
        let client = clients.borrow_and_update().clone();
        tokio::select! {
            // Stopping: what is due is written now, not left stale.
            _ = stop.cancelled() => {
                if due.is_some() {
                    let report = status.borrow().clone();
                    write_status(&client, &namespace, &cluster, &report, &mut written).await;
                }
                return;
            }
            r = clients.changed() => if r.is_err() { return },
            r = status.changed() => {
                if r.is_err() { return }
                status.borrow_and_update();
                due = Some(tokio::time::Instant::now() + SETTLE);
            }
            _ = async { tokio::time::sleep_until(due.expect("armed")).await }, if due.is_some() => {
                due = None;
                let report = status.borrow().clone();
                write_status(&client, &namespace, &cluster, &report, &mut written).await;
            }
            _ = refresh.tick() => {
                let report = status.borrow().clone();
                write_status(&client, &namespace, &cluster, &report, &mut written).await;
            }
            n = notices.recv() => {
                let Some(n) = n else { return };
                publish(&client, &namespace, &cluster, &regarding, &n, &mut published).await;
            }
        }
    }
}

async fn write_status(
    client: &kube::Client,
    namespace: &str,
    cluster: &str,
    report: &StatusReport,
    written: &mut Option<(BTreeMap<String, String>, Instant)>,
) {
    let data = status_data(cluster, report);
    if let Some((last, at)) = written
        && *last == data
        && at.elapsed() < REFRESH
    {
        return;
    }
    let mut full = data.clone();
    let last_sync = if report.last_sync_unix_ms > 0 {
        rfc3339(report.last_sync_unix_ms)
    } else {
        String::new()
    };
    full.insert("lastSyncTime".into(), last_sync);
    full.insert("reportedTime".into(), rfc3339(ferry_proto::now_unix_ms()));
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(STATUS_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "ferry-agent".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(full),
        ..Default::default()
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(MANAGER).force();
    match api.patch(STATUS_NAME, &params, &Patch::Apply(&cm)).await {
        Ok(_) => *written = Some((data, Instant::now())),
        // The namespace may be gone for a moment (a rebuilt cluster): the
        // next report writes it again.
        Err(e) => tracing::debug!(error = %e, "writing the status ConfigMap"),
    }
}

fn bounded(note: &str) -> String {
    if note.len() <= NOTE_MAX {
        return note.to_string();
    }
    let mut end = NOTE_MAX - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}

async fn publish(
    client: &kube::Client,
    namespace: &str,
    cluster: &str,
    regarding: &ObjectReference,
    notice: &Notice,
    published: &mut HashMap<(String, String), Published>,
) {
    let (type_, reason, action, note) = notice.parts();
    let note = bounded(&note);
    published.retain(|_, p| p.first.elapsed() < SERIES_WINDOW);
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let now = MicroTime(Timestamp::now());
    let key = (reason.to_string(), note.clone());
    if let Some(p) = published.get_mut(&key) {
        p.count += 1;
        let patch = serde_json::json!({
            "series": EventSeries { count: p.count, last_observed_time: now.clone() },
        });
        match api
            .patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return,
            // Gone (expired, deleted): publish it anew.
            Err(e) => {
                tracing::debug!(error = %e, "counting a repeated event");
                published.remove(&key);
            }
        }
    }
    let name = format!(
        "{STATUS_NAME}.{:x}",
        Timestamp::now().as_nanosecond() as u128
    );
    let event = Event {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        event_time: Some(now),
        action: Some(action.into()),
        reason: Some(reason.into()),
        note: Some(note),
        type_: Some(type_.into()),
        regarding: Some(regarding.clone()),
        reporting_controller: Some(CONTROLLER.into()),
        reporting_instance: Some(format!("ferry-agent-{cluster}")),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => {
            published.insert(
                key,
                Published {
                    name,
                    count: 1,
                    first: Instant::now(),
                },
            );
        }
        Err(e) => tracing::debug!(error = %e, reason, "publishing an event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::v1::ObjectProblem;

    #[test]
    fn the_status_says_what_an_operator_asks() {
        let r = StatusReport {
            target_commit: "b".repeat(40),
            applied_commit: "a".repeat(40),
            phase: Phase::Failed as i32,
            health: Health::Unknown as i32,
            message: "1 object(s) rejected".into(),
            problems: vec![ObjectProblem {
                object: "Deployment/shop/web".into(),
                source: "app.yaml".into(),
                message: "spec.replicas: Invalid value".into(),
            }],
            objects: 3,
            ..Default::default()
        };
        let d = status_data("eu-1", &r);
        assert_eq!(d["phase"], "Failed");
        assert_eq!(d["cluster"], "eu-1");
        assert_eq!(
            d["problems"],
            "Deployment/shop/web in app.yaml: spec.replicas: Invalid value"
        );
        assert_eq!(d["objects"], "3");
    }

    #[test]
    fn notes_are_cut_at_the_api_limit() {
        let long = "é".repeat(2000);
        let b = bounded(&long);
        assert!(b.len() <= NOTE_MAX, "{}", b.len());
        assert!(b.ends_with("..."));
    }
}
