//! A store that times every operation of the store it wraps, for the
//! `ferry_store_operation_duration_seconds` histogram. Backend-agnostic:
//! whatever database is behind, the figures mean the same.

use super::{Advance, ClusterRecord, PinChange, PinnedCluster, Result, SiteRecord, Store, Summary};
use crate::metrics::{Metrics, OperationLabels};
use ferry_proto::Commit;
use ferry_proto::ledger::{Event, LedgerEntry};
use ferry_proto::rollout::{Rollout, Spec, State};
use ferry_proto::v1::StatusReport;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

pub struct Timed {
    inner: Arc<dyn Store>,
    metrics: Metrics,
}

impl Timed {
    pub fn new(inner: Arc<dyn Store>, metrics: Metrics) -> Self {
        Timed { inner, metrics }
    }
}

/// Delegates each listed method to the inner store, timing it under the
/// method's name.
macro_rules! timed {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)* ) -> $ret:ty; )*) => {
        #[tonic::async_trait]
        impl Store for Timed {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    let started = Instant::now();
                    let r = self.inner.$name($($arg),*).await;
                    self.metrics
                        .store_duration
                        .get_or_create(&OperationLabels { operation: stringify!($name) })
                        .observe(started.elapsed().as_secs_f64());
                    r
                }
            )*

            fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<super::Change>> {
                self.inner.changes()
            }
        }
    };
}

timed! {
    fn hello(&self, name: &str, certificate_generation: Option<i64>, declared: Option<BTreeMap<String, String>>, agent_version: &str, status: Option<StatusReport>, now_ms: i64) -> Result<()>;
    fn add_cluster(&self, name: &str, labels: BTreeMap<String, String>, token_hash: &str, expires_ms: i64, now_ms: i64) -> Result<()>;
    fn redeem(&self, token_hash: &str, now_ms: i64) -> Result<(String, i64)>;
    fn revoke(&self, name: &str, now_ms: i64) -> Result<()>;
    fn check_certificate(&self, name: &str, generation: Option<i64>) -> Result<i64>;
    fn create_token(&self, hash: &str, name: &str, role: &str, now_ms: i64) -> Result<()>;
    fn token(&self, hash: &str) -> Result<Option<(String, String)>>;
    fn token_count(&self) -> Result<i64>;
    fn report(&self, name: &str, status: StatusReport, now_ms: i64) -> Result<()>;
    fn seen(&self, name: &str, now_ms: i64) -> Result<()>;
    fn report_many(&self, beats: Vec<(String, Option<StatusReport>, i64)>) -> Vec<Result<()>>;
    fn set_path_override(&self, name: &str, path: Option<String>) -> Result<()>;
    fn clusters(&self) -> Result<Vec<ClusterRecord>>;
    fn clusters_page(&self, after: &str, limit: u32) -> Result<Vec<ClusterRecord>>;
    fn cluster(&self, name: &str) -> Result<Option<ClusterRecord>>;
    fn clusters_named(&self, names: Vec<String>) -> Result<Vec<ClusterRecord>>;
    fn pinned(&self, clusters: Vec<String>) -> Result<Vec<PinnedCluster>>;
    fn pin(&self, change: PinChange, now_ms: i64) -> Result<Vec<LedgerEntry>>;
    fn history(&self, cluster: Option<&str>, limit: u32) -> Result<Vec<LedgerEntry>>;
    fn create_rollout(&self, spec: Spec, state: State, actor: &str, now_ms: i64) -> Result<Rollout>;
    fn rollouts(&self, active_only: bool) -> Result<Vec<Rollout>>;
    fn rollout(&self, id: &str) -> Result<Rollout>;
    fn advance(&self, step: Advance, now_ms: i64) -> Result<(Vec<LedgerEntry>, Vec<Event>)>;
    fn events(&self, rollout: Option<&str>, after_id: i64, limit: u32) -> Result<Vec<Event>>;
    fn record_signer(&self, commit: &Commit, signer: &str, now_ms: i64) -> Result<()>;
    fn summary(&self) -> Result<Summary>;
    fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<super::Lease>;
    fn relay_preview(&self, cluster: &str, request: Vec<u8>) -> Result<bool>;
    fn answer_relayed(&self, id: &str, answer: Vec<u8>) -> Result<()>;
    fn take_relayed(&self, id: &str) -> Result<Option<Vec<u8>>>;
    fn session_ended(&self, name: &str, hello_ms: i64) -> Result<()>;
    fn relay_command(&self, id: &str, request: Vec<u8>) -> Result<bool>;
    fn take_command(&self, id: &str, taker: &str) -> Result<Option<Vec<u8>>>;
    fn untaken_commands(&self, within_ms: i64) -> Result<Vec<String>>;
    fn answer_command(&self, id: &str, answer: Vec<u8>) -> Result<()>;
    fn command_answer(&self, id: &str) -> Result<Option<Vec<u8>>>;
    fn withdraw_command(&self, id: &str) -> Result<bool>;
    fn add_site(&self, site: SiteRecord, now_ms: i64) -> Result<()>;
    fn remove_site(&self, name: &str) -> Result<SiteRecord>;
    fn sites(&self) -> Result<Vec<SiteRecord>>;
    fn cluster_labels(&self) -> Result<Vec<(String, BTreeMap<String, String>)>>;
    fn report_mirror(
        &self,
        site: &str,
        refs: BTreeMap<String, String>,
        commits: Vec<String>,
        how: &str,
        now_ms: i64
    ) -> Result<SiteRecord>;
    fn sites_holding(&self, commit: &Commit) -> Result<Vec<String>>;
    fn import_site_status(
        &self,
        site: &str,
        exported_ms: i64,
        encoded: Vec<u8>,
        now_ms: i64
    ) -> Result<bool>;
    fn site_statuses(&self) -> Result<Vec<(String, i64, Vec<u8>)>>;
}
