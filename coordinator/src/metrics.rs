//! What the coordinator counts, for Prometheus (`/metrics` on
//! `--metrics-listen`). No series per cluster: the fleet is counted by
//! phase and health, so a scrape stays the same size at 10 or 10,000
//! clusters. Rollouts get a series each only while active.

use crate::hub::Hub;
use ferry_proto::v1::{Health, Phase};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportLabels {
    /// stored, malformed, oversized, failed (the store refused it),
    /// superseded (a newer report of the cluster came before it was stored).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub phase: &'static str,
    pub health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActiveRolloutLabels {
    pub rollout: String,
}

fn store_histogram() -> Histogram {
    // 100 µs to about 3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// The coordinator's metrics. Cloning shares them.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub reports: Family<ReportLabels, Counter>,
    pub pins: Counter,
    pub store_duration: Family<OperationLabels, Histogram>,
    pub clusters: Family<ClusterLabels, Gauge>,
    pub connected: Gauge,
    pub rollouts: Family<RolloutLabels, Gauge>,
    pub rollout_wave: Family<ActiveRolloutLabels, Gauge>,
    pub assignments_queued: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reports: Family::default(),
            pins: Counter::default(),
            store_duration: Family::new_with_constructor(store_histogram),
            clusters: Family::default(),
            connected: Gauge::default(),
            rollouts: Family::default(),
            rollout_wave: Family::default(),
            assignments_queued: Gauge::default(),
        }
    }
}

/// The label value of a cluster phase.
pub fn phase_label(p: i32) -> &'static str {
    match Phase::try_from(p).unwrap_or_default() {
        Phase::Unspecified => "unknown",
        Phase::Pending => "pending",
        Phase::Syncing => "syncing",
        Phase::Synced => "synced",
        Phase::Failed => "failed",
    }
}

/// The label value of a health.
pub fn health_label(h: i32) -> &'static str {
    match Health::try_from(h).unwrap_or_default() {
        Health::Unknown => "unknown",
        Health::Healthy => "healthy",
        Health::Progressing => "progressing",
        Health::Degraded => "degraded",
    }
}

impl Metrics {
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "ferry_status_reports",
            "Status reports from agents, by what became of them",
            self.reports.clone(),
        );
        r.register(
            "ferry_pins",
            "Pin changes recorded in the ledger (manual and by rollouts)",
            self.pins.clone(),
        );
        r.register(
            "ferry_store_operation_duration_seconds",
            "Time a store operation took, queueing included",
            self.store_duration.clone(),
        );
        r.register(
            "ferry_clusters",
            "Enrolled clusters by the phase and health of their last report",
            self.clusters.clone(),
        );
        r.register(
            "ferry_clusters_connected",
            "Clusters whose agent holds a session with this coordinator",
            self.connected.clone(),
        );
        r.register("ferry_rollouts", "Rollouts by phase", self.rollouts.clone());
        r.register(
            "ferry_rollout_current_wave",
            "The wave an active rollout is in (1-based)",
            self.rollout_wave.clone(),
        );
        r.register(
            "ferry_assignments_queued",
            "Assignments waiting in session queues to be sent to agents",
            self.assignments_queued.clone(),
        );
        r
    }

    /// Brings the fleet counts up to date (just before a scrape).
    pub async fn refresh(&self, hub: &Hub) {
        let (connected, queued) = hub.session_counts();
        self.connected.set(connected as i64);
        self.assignments_queued.set(queued as i64);
        match hub.store.summary().await {
            Ok(s) => {
                self.clusters.clear();
                // Every phase and health appears, zero or not, so a series
                // does not vanish when its last cluster leaves it.
                for p in 0..=4 {
                    for h in 0..=3 {
                        let n = s
                            .clusters
                            .iter()
                            .filter(|(cp, ch, _)| {
                                phase_label(*cp) == phase_label(p)
                                    && health_label(*ch) == health_label(h)
                            })
                            .map(|(_, _, n)| *n)
                            .sum::<u64>();
                        self.clusters
                            .get_or_create(&ClusterLabels {
                                phase: phase_label(p),
                                health: health_label(h),
                            })
                            .set(n as i64);
                    }
                }
                self.rollouts.clear();
                for (phase, n) in s.rollouts {
                    self.rollouts
                        .get_or_create(&RolloutLabels { phase })
                        .set(n as i64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "counting the fleet for metrics"),
        }
        match hub.store.rollouts(true).await {
            Ok(active) => {
                self.rollout_wave.clear();
                for r in active {
                    self.rollout_wave
                        .get_or_create(&ActiveRolloutLabels { rollout: r.id })
                        .set(r.state.wave as i64 + 1);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading active rollouts for metrics"),
        }
    }
}

/// The probe and metrics endpoint's view of the coordinator: ready when its
/// store answers.
pub fn ops(hub: Arc<Hub>) -> ferry_proto::ops::Ops {
    let registry = Arc::new(hub.metrics.registry());
    let (ready_hub, refresh_hub) = (hub.clone(), hub);
    ferry_proto::ops::Ops {
        registry,
        ready: Arc::new(move || {
            let hub = ready_hub.clone();
            Box::pin(async move {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    hub.store.token_count(),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("the store: {e}")),
                    Err(_) => Err("the store did not answer within 5 s".into()),
                }
            })
        }),
        refresh: Some(Arc::new(move || {
            let hub = refresh_hub.clone();
            Box::pin(async move { hub.metrics.refresh(&hub).await })
        })),
    }
}
