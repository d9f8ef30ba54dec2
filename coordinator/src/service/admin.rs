//! `Admin`: what the CLI talks to. Every call is authenticated by its
//! bearer token and checked against the role it needs.

use super::{driver_status, repo_status, store_status};
use crate::auth::{self, Role};
use crate::driver::DriverHandle;
use crate::hub::Hub;
use crate::repo::Repo;
use crate::store::{ClusterRecord, PinChange, SiteRecord};
use ferry_proto::v1::admin_server::Admin;
/// The most clusters one `Diff` asks.
const MAX_DIFF_CLUSTERS: usize = 1000;

use ferry_proto::v1::{
    AddClusterRequest, AddClusterResponse, Cluster, ClusterDiff, ControlRolloutRequest,
    CreateTokenRequest, CreateTokenResponse, DiffRequest, DiffResponse, Event, GetClusterRequest,
    GetRolloutRequest, HistoryRequest, HistoryResponse, ListClustersRequest, ListClustersResponse,
    ListRolloutsRequest, ListRolloutsResponse, PinRequest, PinResponse, Preview, PreviewRequest,
    RevokeClusterRequest, Rollout, RolloutControl, SetClusterPathRequest, StartRolloutRequest,
    WatchEventsRequest,
};
use ferry_proto::v1::{
    AddSiteRequest, ListSitesRequest, ListSitesResponse, RemoveSiteRequest, ReportMirrorRequest,
    Site, SiteStatus,
};
use ferry_proto::{now_unix_ms, validate_cluster_name};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Clusters in a `ListClusters` page unless asked otherwise, and at most.
const DEFAULT_PAGE: u32 = 500;
const MAX_PAGE: u32 = 1000;
/// A page ends early past this many bytes (clients accept 4 MiB).
const PAGE_BYTES: usize = 2 << 20;

pub struct AdminService {
    pub hub: Arc<Hub>,
    pub repo: Arc<Repo>,
    pub driver: DriverHandle,
}

impl AdminService {
    async fn require<T>(
        &self,
        req: &Request<T>,
        role: Role,
        action: &str,
    ) -> Result<auth::Caller, Status> {
        auth::require(&*self.hub.store, req, role, action).await
    }

    fn to_proto(&self, c: ClusterRecord) -> Cluster {
        let (path, path_error) = match self
            .hub
            .path(&c.name, &c.labels, c.path_override.as_deref())
        {
            Ok(p) => (p, String::new()),
            Err(e) => (String::new(), e.to_string()),
        };
        Cluster {
            connected: self.hub.reachable(&c.name, c.live_session),
            pinned_commit: c.pin.as_ref().map(|p| p.0.to_string()).unwrap_or_default(),
            generation: c.pin.as_ref().map(|p| p.1).unwrap_or_default(),
            path,
            path_error,
            labels: c.labels.into_iter().collect(),
            status: c.status,
            last_seen_unix_ms: c.last_seen_ms,
            agent_version: c.agent_version,
            name: c.name,
        }
    }

    async fn cluster(&self, name: &str) -> Result<Cluster, Status> {
        let c = self
            .hub
            .store
            .cluster(name)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("unknown cluster {name:?}")))?;
        Ok(self.to_proto(c))
    }
}

/// How a report came, as stored and shown: its own words (control
/// characters dropped, cut short) and who sent it.
fn provenance(how: &str, caller: &str) -> String {
    let how: String = how.chars().filter(|c| !c.is_control()).take(200).collect();
    format!("{how} by {caller}")
}

/// A cluster's name and labels.
type Labelled = (String, BTreeMap<String, String>);

/// The most commits one mirror report may name.
const MAX_MIRROR_COMMITS: usize = 100_000;
/// What one site status import may carry.
const MAX_SITE_CLUSTERS: usize = 10_000;
const MAX_SITE_HISTORY: usize = 1_000;

impl AdminService {
    /// The clusters (`NAME (site S)`) whose site's mirror lacks `commit`.
    async fn mirror_lacks(
        &self,
        clusters: &[String],
        commit: &ferry_proto::Commit,
    ) -> Result<Vec<String>, Status> {
        if !self.hub.has_sites() {
            return Ok(vec![]);
        }
        let pinned = self
            .hub
            .store
            .pinned(clusters.to_vec())
            .await
            .map_err(store_status)?;
        let mut lacking = vec![];
        let mut holding: Option<Vec<String>> = None;
        for c in &pinned {
            let Some((site, _)) = self.hub.site_of(&c.labels) else {
                continue;
            };
            if holding.is_none() {
                holding = Some(
                    self.hub
                        .store
                        .sites_holding(commit)
                        .await
                        .map_err(store_status)?,
                );
            }
            if !holding.as_ref().is_some_and(|h| h.contains(&site)) {
                lacking.push(format!("{} (site {site})", c.name));
            }
        }
        Ok(lacking)
    }

    /// A site as the CLI shows it, with the clusters it selects.
    fn site_proto(&self, s: SiteRecord, clusters: &[Labelled]) -> Site {
        let selected = ferry_proto::LabelSelector::parse(&s.selector)
            .map(|sel| {
                clusters
                    .iter()
                    .filter(|c| sel.matches(&c.1))
                    .map(|c| c.0.clone())
                    .collect()
            })
            .unwrap_or_default();
        Site {
            name: s.name,
            mirror_url: ferry_proto::redact(&s.mirror_url),
            selector: s.selector,
            refs: s.refs.into_iter().collect(),
            commits: s.commits,
            reported_unix_ms: s.reported_ms,
            reported_by: s.reported_by,
            clusters: selected,
            upstream: Default::default(),
            status: None,
            status_imported_unix_ms: 0,
        }
    }

    /// Every site as the CLI shows it: clusters, how far its mirror lags,
    /// its last imported status.
    async fn sites_view(&self, lag: bool) -> Result<Vec<Site>, Status> {
        let clusters = self
            .hub
            .store
            .cluster_labels()
            .await
            .map_err(store_status)?;
        let sites = self.hub.store.sites().await.map_err(store_status)?;
        // How far each mirror's branches lag the repository: one fetch,
        // then the coordinator's own copy of the history.
        let branches: Vec<Vec<(String, String)>> = sites
            .iter()
            .map(|s| {
                s.refs
                    .iter()
                    .filter(|(r, _)| r.starts_with("refs/heads/"))
                    .map(|(r, c)| (r.clone(), c.clone()))
                    .collect()
            })
            .collect();
        let repo = self.repo.clone();
        let lags = tokio::task::spawn_blocking(move || {
            if !lag {
                return vec![Default::default(); branches.len()];
            }
            let fetched = if branches.iter().any(|b| !b.is_empty()) {
                repo.refresh()
                    .err()
                    .map(|e| format!("upstream unknown: {e}"))
            } else {
                None
            };
            branches
                .into_iter()
                .map(|refs| {
                    refs.into_iter()
                        .map(|(r, tip)| {
                            let lag = fetched.clone().unwrap_or_else(|| repo.lag(&r, &tip));
                            (r, lag)
                        })
                        .collect::<std::collections::HashMap<_, _>>()
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let mut statuses: std::collections::HashMap<String, (i64, SiteStatus)> = self
            .hub
            .store
            .site_statuses()
            .await
            .map_err(store_status)?
            .into_iter()
            .filter_map(|(site, at, bytes)| {
                let s = <SiteStatus as prost::Message>::decode(bytes.as_slice()).ok()?;
                Some((site, (at, s)))
            })
            .collect();
        Ok(sites
            .into_iter()
            .zip(lags)
            .map(|(s, lag)| {
                let status = statuses.remove(&s.name);
                Site {
                    upstream: lag,
                    status_imported_unix_ms: status.as_ref().map_or(0, |s| s.0),
                    status: status.map(|s| s.1),
                    ..self.site_proto(s, &clusters)
                }
            })
            .collect())
    }

    /// Reloads the hub's sites and sends new assignments to `clusters`.
    async fn sites_changed(&self, clusters: &[String]) -> Result<(), Status> {
        let sites = self.hub.store.sites().await.map_err(store_status)?;
        self.hub.set_sites(&sites);
        self.hub
            .push_many(clusters.iter().map(String::as_str))
            .await;
        Ok(())
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn add_site(&self, req: Request<AddSiteRequest>) -> Result<Response<Site>, Status> {
        let caller = self.require(&req, Role::Admin, "adding a site").await?;
        let r = req.into_inner();
        validate_cluster_name(&r.name)
            .map_err(|e| Status::invalid_argument(format!("site name: {e}")))?;
        if r.mirror_url.trim().is_empty() {
            return Err(Status::invalid_argument("a mirror URL is required"));
        }
        if ferry_proto::redact(&r.mirror_url) != r.mirror_url {
            return Err(Status::invalid_argument(
                "the mirror URL carries a password: credentials belong in each cluster's Git Secret",
            ));
        }
        if r.selector.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a selector is required (the clusters the site holds)",
            ));
        }
        let sel = ferry_proto::LabelSelector::parse(&r.selector)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let clusters = self
            .hub
            .store
            .cluster_labels()
            .await
            .map_err(store_status)?;
        let picked: Vec<String> = clusters
            .iter()
            .filter(|c| sel.matches(&c.1))
            .map(|c| c.0.clone())
            .collect();
        // A cluster is in one site at most.
        for c in clusters.iter().filter(|c| sel.matches(&c.1)) {
            if let Some((other, _)) = self.hub.site_of(&c.1) {
                return Err(Status::failed_precondition(format!(
                    "cluster {} would be in sites {other} and {}: a cluster reads from one mirror; narrow the selector",
                    c.0, r.name
                )));
            }
        }
        let site = SiteRecord {
            name: r.name.clone(),
            mirror_url: r.mirror_url,
            selector: r.selector,
            ..SiteRecord::default()
        };
        self.hub
            .store
            .add_site(site.clone(), now_unix_ms())
            .await
            .map_err(store_status)?;
        tracing::info!(site = %r.name, by = %caller.name, clusters = picked.len(), "site added");
        self.sites_changed(&picked).await?;
        Ok(Response::new(self.site_proto(site, &clusters)))
    }

    async fn remove_site(&self, req: Request<RemoveSiteRequest>) -> Result<Response<Site>, Status> {
        let caller = self.require(&req, Role::Admin, "removing a site").await?;
        let name = req.into_inner().name;
        let clusters = self
            .hub
            .store
            .cluster_labels()
            .await
            .map_err(store_status)?;
        let site = self
            .hub
            .store
            .remove_site(&name)
            .await
            .map_err(store_status)?;
        let shown = self.site_proto(site, &clusters);
        tracing::warn!(site = %name, by = %caller.name, "site removed; its clusters read from the repository again");
        self.sites_changed(&shown.clusters).await?;
        Ok(Response::new(shown))
    }

    async fn list_sites(
        &self,
        req: Request<ListSitesRequest>,
    ) -> Result<Response<ListSitesResponse>, Status> {
        self.require(&req, Role::Viewer, "listing sites").await?;
        let lag = req.get_ref().lag;
        Ok(Response::new(ListSitesResponse {
            sites: self.sites_view(lag).await?,
        }))
    }

    async fn import_site_status(&self, req: Request<SiteStatus>) -> Result<Response<Site>, Status> {
        let caller = self
            .require(&req, Role::Mirror, "importing a site's status")
            .await?;
        let mut r = req.into_inner();
        if r.clusters.len() > MAX_SITE_CLUSTERS || r.history.len() > MAX_SITE_HISTORY {
            return Err(Status::invalid_argument(format!(
                "site {}: at most {MAX_SITE_CLUSTERS} clusters and {MAX_SITE_HISTORY} ledger entries",
                r.site
            )));
        }
        // Kept small and plain: names checked, problems dropped, messages cut.
        let cut = |s: &mut String| {
            if s.len() > 1024 {
                let end = (0..=1024)
                    .rev()
                    .find(|i| s.is_char_boundary(*i))
                    .unwrap_or(0);
                s.truncate(end);
            }
        };
        for c in &mut r.clusters {
            validate_cluster_name(&c.name)
                .map_err(|e| Status::invalid_argument(format!("site {}: {e}", r.site)))?;
            if let Some(st) = &mut c.status {
                st.problems.clear();
                cut(&mut st.message);
            }
            cut(&mut c.path_error);
        }
        for e in &mut r.history {
            cut(&mut e.reason);
        }
        r.how = provenance(&r.how, &caller.name);
        let exported = r.exported_unix_ms;
        let imported = now_unix_ms();
        let kept = self
            .hub
            .store
            .import_site_status(
                &r.site,
                exported,
                prost::Message::encode_to_vec(&r),
                imported,
            )
            .await
            .map_err(store_status)?;
        if !kept {
            return Err(Status::failed_precondition(format!(
                "site {}: an export at least as new is imported already; nothing changed",
                r.site
            )));
        }
        tracing::info!(site = %r.site, clusters = r.clusters.len(), how = %r.how, "site status imported");
        let site = self
            .hub
            .store
            .sites()
            .await
            .map_err(store_status)?
            .into_iter()
            .find(|s| s.name == r.site)
            .ok_or_else(|| Status::not_found(format!("unknown site {:?}", r.site)))?;
        let clusters = self
            .hub
            .store
            .cluster_labels()
            .await
            .map_err(store_status)?;
        Ok(Response::new(Site {
            status_imported_unix_ms: imported,
            status: Some(r),
            ..self.site_proto(site, &clusters)
        }))
    }

    async fn report_mirror(
        &self,
        req: Request<ReportMirrorRequest>,
    ) -> Result<Response<Site>, Status> {
        let caller = self
            .require(&req, Role::Mirror, "reporting a mirror")
            .await?;
        let r = req.into_inner();
        if r.commits.len() > MAX_MIRROR_COMMITS {
            return Err(Status::invalid_argument(format!(
                "a report names at most {MAX_MIRROR_COMMITS} commits"
            )));
        }
        for c in r.refs.values().chain(r.commits.iter()) {
            ferry_proto::Commit::parse(c).map_err(|e| {
                Status::invalid_argument(format!("mirror report for site {}: {e}", r.site))
            })?;
        }
        for name in r.refs.keys() {
            if name.len() > 255 || name.chars().any(|c| c.is_control() || c == ' ') {
                return Err(Status::invalid_argument(format!(
                    "mirror report for site {}: ref {name:?} is not a ref name",
                    r.site
                )));
            }
        }
        let how = provenance(&r.how, &caller.name);
        let site = self
            .hub
            .store
            .report_mirror(
                &r.site,
                r.refs.into_iter().collect(),
                r.commits,
                &how,
                now_unix_ms(),
            )
            .await
            .map_err(store_status)?;
        tracing::info!(site = %site.name, commits = site.commits, how = %how, "mirror reported");
        // Rollouts waiting for this mirror look again now.
        self.hub.status_changed.notify_waiters();
        let clusters = self
            .hub
            .store
            .cluster_labels()
            .await
            .map_err(store_status)?;
        Ok(Response::new(self.site_proto(site, &clusters)))
    }

    async fn list_clusters(
        &self,
        req: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        self.require(&req, Role::Viewer, "listing clusters").await?;
        let r = req.into_inner();
        let size = match r.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        // One more than asked, to know whether there is a next page.
        let records = self
            .hub
            .store
            .clusters_page(&r.page_token, size + 1)
            .await
            .map_err(store_status)?;
        let more = records.len() > size as usize;
        let mut clusters = vec![];
        let mut bytes = 0;
        for c in records.into_iter().take(size as usize) {
            let c = self.to_proto(c);
            bytes += prost::Message::encoded_len(&c);
            clusters.push(c);
            if bytes > PAGE_BYTES {
                break;
            }
        }
        let cut = more || clusters.len() < size as usize && bytes > PAGE_BYTES;
        let next_page_token = if cut {
            clusters.last().map(|c| c.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListClustersResponse {
            clusters,
            next_page_token,
        }))
    }

    async fn get_cluster(
        &self,
        req: Request<GetClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        self.require(&req, Role::Viewer, "reading a cluster")
            .await?;
        Ok(Response::new(self.cluster(&req.into_inner().name).await?))
    }

    async fn pin(&self, req: Request<PinRequest>) -> Result<Response<PinResponse>, Status> {
        let entered = std::time::Instant::now();
        let actor = self.require(&req, Role::Operator, "pinning").await?.name;
        let auth_ms = entered.elapsed().as_millis() as u64;
        let r = req.into_inner();
        if r.clusters.is_empty() {
            return Err(Status::invalid_argument("name at least one cluster to pin"));
        }
        if r.r#ref.trim().is_empty() {
            return Err(Status::invalid_argument("a ref to pin to is required"));
        }
        let t = std::time::Instant::now();
        let repo = self.repo.clone();
        let reference = r.r#ref.clone();
        let (commit, signer) = tokio::task::spawn_blocking(move || repo.resolve(&reference))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(repo_status)?;
        if let Some(s) = &signer {
            self.hub
                .store
                .record_signer(&commit, &s.to_string(), now_unix_ms())
                .await
                .map_err(store_status)?;
        }
        let resolved = t.elapsed();
        let lacking = self.mirror_lacks(&r.clusters, &commit).await?;
        let mut reason = r.reason;
        if !lacking.is_empty() {
            if !r.force {
                return Err(Status::failed_precondition(format!(
                    "the mirror of {} does not hold {} yet: feed it (`ferry mirror sync`, a bundle) and pin again, or pin with --force (recorded in the ledger)",
                    lacking.join(", "),
                    commit.short()
                )));
            }
            reason = format!(
                "{reason} [forced: the mirror of {} lacked it]",
                lacking.join(", ")
            );
        }
        // Whether a cluster inside an active rollout may be pinned is
        // decided in the pin's own transaction.
        let entries = self
            .hub
            .store
            .pin(
                PinChange {
                    clusters: r.clusters,
                    commit: commit.clone(),
                    actor: actor.clone(),
                    reason,
                    rollout: None,
                    force: r.force,
                    allow_mass_prune: r.allow_mass_prune,
                },
                now_unix_ms(),
            )
            .await
            .map_err(store_status)?;
        let stored = t.elapsed();
        self.hub.metrics.pins.inc_by(entries.len() as u64);
        // Agents first, then the log.
        self.hub
            .push_many(entries.iter().map(|e| e.cluster.as_str()))
            .await;
        let pushed = t.elapsed();
        crate::summary::pinned(&entries, &actor);
        tracing::debug!(
            clusters = entries.len(),
            auth_ms,
            resolve_ms = resolved.as_millis() as u64,
            store_ms = (stored - resolved).as_millis() as u64,
            push_ms = (pushed - stored).as_millis() as u64,
            "pin"
        );
        Ok(Response::new(PinResponse {
            commit: commit.to_string(),
            entries: entries
                .iter()
                .map(|e| {
                    let mut e: ferry_proto::v1::LedgerEntry = e.into();
                    e.signer = signer.as_ref().map(|s| s.to_string()).unwrap_or_default();
                    e
                })
                .collect(),
        }))
    }

    async fn set_cluster_path(
        &self,
        req: Request<SetClusterPathRequest>,
    ) -> Result<Response<Cluster>, Status> {
        self.require(&req, Role::Operator, "setting a path").await?;
        let r = req.into_inner();
        let path = r.path.trim().trim_matches('/');
        if !ferry_proto::assignment::safe_path(path) {
            return Err(Status::invalid_argument(format!("unsafe path {path:?}")));
        }
        self.hub
            .store
            .set_path_override(&r.name, (!path.is_empty()).then(|| path.to_string()))
            .await
            .map_err(store_status)?;
        self.hub.push(&r.name).await;
        Ok(Response::new(self.cluster(&r.name).await?))
    }

    async fn start_rollout(
        &self,
        req: Request<StartRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        let actor = self
            .require(&req, Role::Operator, "starting a rollout")
            .await?
            .name;
        let req = req.into_inner();
        let plan = req
            .plan
            .ok_or_else(|| Status::invalid_argument("a rollout plan is required"))?;
        let r = if req.dry_run {
            self.driver.plan(&plan, &actor).await
        } else {
            self.driver.start(&plan, &actor).await
        }
        .map_err(driver_status)?;
        Ok(Response::new((&r).into()))
    }

    async fn diff(&self, req: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        self.require(&req, Role::Operator, "previewing a commit")
            .await?;
        let r = req.into_inner();
        if r.r#ref.trim().is_empty() {
            return Err(Status::invalid_argument("a ref to preview is required"));
        }
        if r.clusters.is_empty() == r.selector.trim().is_empty() {
            return Err(Status::invalid_argument(
                "name the clusters to preview, or give a selector (not both)",
            ));
        }
        let selector = if r.clusters.is_empty() {
            Some(
                ferry_proto::LabelSelector::parse(&r.selector)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            )
        } else {
            None
        };
        let repo = self.repo.clone();
        let reference = r.r#ref.clone();
        let (commit, _) = tokio::task::spawn_blocking(move || repo.resolve(&reference))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(repo_status)?;
        let all = self.hub.store.clusters().await.map_err(store_status)?;
        let chosen: Vec<_> = match &selector {
            Some(s) => all.into_iter().filter(|c| s.matches(&c.labels)).collect(),
            None => {
                let unknown: Vec<&String> = r
                    .clusters
                    .iter()
                    .filter(|n| !all.iter().any(|c| &c.name == *n))
                    .collect();
                if !unknown.is_empty() {
                    return Err(Status::not_found(format!(
                        "unknown cluster(s): {}",
                        unknown
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                all.into_iter()
                    .filter(|c| r.clusters.contains(&c.name))
                    .collect()
            }
        };
        if chosen.len() > MAX_DIFF_CLUSTERS {
            return Err(Status::invalid_argument(format!(
                "{} clusters chosen: preview at most {MAX_DIFF_CLUSTERS} at once",
                chosen.len()
            )));
        }
        let deadline = std::time::Duration::from_secs(match r.timeout_seconds {
            0 => 30,
            s => s.min(300) as u64,
        });
        let asks = chosen.iter().map(|c| {
            let hub = self.hub.clone();
            let commit = commit.clone();
            async move {
                // Offline (on no replica): said at once, not after the wait.
                if !hub.reachable(&c.name, c.live_session) {
                    return Err("not previewed: the cluster is not connected".to_string());
                }
                let path = match hub.path(&c.name, &c.labels, c.path_override.as_deref()) {
                    Ok(p) => p,
                    Err(e) => return Err(format!("not previewed: its path does not resolve: {e}")),
                };
                let (repo_url, site) = hub.source_of(&c.labels);
                let req = PreviewRequest {
                    id: String::new(),
                    repo_url,
                    site: site.unwrap_or_default(),
                    commit: commit.to_string(),
                    path,
                    allow_mass_prune: false,
                    labels: c.labels.clone().into_iter().collect(),
                };
                hub.preview(&c.name, req, deadline).await
            }
        });
        let answers = futures::future::join_all(asks).await;
        let clusters = chosen
            .iter()
            .zip(answers)
            .map(|(c, a)| match a {
                Ok(mut p) => {
                    if r.summary {
                        for ch in &mut p.changes {
                            ch.fields.clear();
                        }
                    }
                    ClusterDiff {
                        cluster: c.name.clone(),
                        previewed: p.error.is_empty(),
                        preview: Some(p),
                    }
                }
                Err(why) => ClusterDiff {
                    cluster: c.name.clone(),
                    previewed: false,
                    preview: Some(Preview {
                        error: why,
                        ..Preview::default()
                    }),
                },
            })
            .collect();
        Ok(Response::new(DiffResponse {
            commit: commit.to_string(),
            clusters,
        }))
    }

    async fn get_rollout(
        &self,
        req: Request<GetRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        self.require(&req, Role::Viewer, "reading a rollout")
            .await?;
        let id = req.into_inner().id;
        let r = if id.is_empty() {
            self.hub
                .store
                .rollouts(false)
                .await
                .map_err(store_status)?
                .into_iter()
                .next()
                .ok_or_else(|| Status::not_found("there are no rollouts yet"))?
        } else {
            self.hub.store.rollout(&id).await.map_err(store_status)?
        };
        Ok(Response::new((&r).into()))
    }

    async fn list_rollouts(
        &self,
        req: Request<ListRolloutsRequest>,
    ) -> Result<Response<ListRolloutsResponse>, Status> {
        self.require(&req, Role::Viewer, "listing rollouts").await?;
        let rollouts = self.hub.store.rollouts(false).await.map_err(store_status)?;
        Ok(Response::new(ListRolloutsResponse {
            rollouts: rollouts.iter().map(Into::into).collect(),
        }))
    }

    async fn control_rollout(
        &self,
        req: Request<ControlRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        let actor = self
            .require(&req, Role::Operator, "controlling a rollout")
            .await?
            .name;
        let r = req.into_inner();
        let control = RolloutControl::try_from(r.control).unwrap_or(RolloutControl::Unspecified);
        if control == RolloutControl::Unspecified {
            return Err(Status::invalid_argument(
                "say what to do: pause, resume, abort, rollback or approve",
            ));
        }
        let rec = self
            .driver
            .control(&r.id, control, &actor)
            .await
            .map_err(driver_status)?;
        Ok(Response::new((&rec).into()))
    }

    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

    async fn watch_events(
        &self,
        req: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.require(&req, Role::Viewer, "watching events").await?;
        let r = req.into_inner();
        let filter = (!r.rollout.is_empty()).then_some(r.rollout);
        // Subscribe before reading the backlog, so nothing falls between.
        // Whatever the live feed drops (a wave of thousands of pins outruns
        // it) is read again from the store, so a watch never loses events.
        let mut live = self.driver.events.subscribe();
        // With replicas, the driver writing events may be another's: the
        // store is read every half second (and whenever this replica's
        // driver says something), in id order, and the live feed only
        // wakes the reader.
        let shared = self.hub.shared();
        let store = self.hub.store.clone();
        let shutdown = self.hub.shutdown.clone();
        let (tx, rx) = mpsc::channel(64);
        self.hub.tasks.spawn(async move {
            let mut last = r.after_id;
            loop {
                // Catch up from the store, a page at a time.
                loop {
                    let page = match store.events(filter.as_deref(), last, 1_000).await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = tx.send(Err(store_status(e))).await;
                            return;
                        }
                    };
                    if page.is_empty() {
                        break;
                    }
                    for e in page {
                        last = e.id;
                        if tx.send(Ok((&e).into())).await.is_err() {
                            return;
                        }
                    }
                }
                // Then follow the live feed until it drops something.
                loop {
                    let e = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tx.closed() => return,
                        e = live.recv() => match e {
                            Ok(e) => e,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                            Err(_) => return,
                        },
                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)), if shared => break,
                    };
                    if shared {
                        break;
                    }
                    if e.id <= last || filter.as_deref().is_some_and(|f| f != e.rollout) {
                        continue;
                    }
                    last = e.id;
                    if tx.send(Ok((&e).into())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn add_cluster(
        &self,
        req: Request<AddClusterRequest>,
    ) -> Result<Response<AddClusterResponse>, Status> {
        let caller = self.require(&req, Role::Admin, "adding a cluster").await?;
        let r = req.into_inner();
        validate_cluster_name(&r.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        for (k, v) in &r.labels {
            ferry_proto::validate_label(k, v)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        // Refuse now what would only fail at the first pin: labels the path
        // template needs but lacks, or values that make it unsafe.
        let labels: BTreeMap<String, String> = r.labels.clone().into_iter().collect();
        if let Err(e) = self.hub.path(&r.name, &labels, None) {
            return Err(Status::invalid_argument(format!("cluster {}: {e}", r.name)));
        }
        let ttl = if r.token_ttl_seconds <= 0 {
            3600
        } else {
            r.token_ttl_seconds
        };
        let token = auth::new_secret("ferry-join-");
        let expires = now_unix_ms() + ttl * 1000;
        self.hub
            .store
            .add_cluster(&r.name, labels, &auth::hash(&token), expires, now_unix_ms())
            .await
            .map_err(store_status)?;
        // Added again: any session on an earlier certificate ends now.
        self.hub.close(&r.name);
        tracing::info!(cluster = %r.name, by = %caller.name, "cluster added; join token issued");
        Ok(Response::new(AddClusterResponse {
            cluster: Some(self.cluster(&r.name).await?),
            join_token: token,
            expires_unix_ms: expires,
        }))
    }

    async fn revoke_cluster(
        &self,
        req: Request<RevokeClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        let caller = self
            .require(&req, Role::Admin, "revoking a cluster")
            .await?;
        let name = req.into_inner().name;
        self.hub
            .store
            .revoke(&name, now_unix_ms())
            .await
            .map_err(store_status)?;
        self.hub.close(&name);
        tracing::warn!(cluster = %name, by = %caller.name, "cluster revoked; its session is closed");
        Ok(Response::new(self.cluster(&name).await?))
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = self.require(&req, Role::Admin, "creating tokens").await?;
        let r = req.into_inner();
        let role = Role::parse(&r.role).ok_or_else(|| {
            Status::invalid_argument(format!(
                "role {:?}: mirror, viewer, operator or admin",
                r.role
            ))
        })?;
        if r.name.trim().is_empty() {
            return Err(Status::invalid_argument(
                "name the token (who or what it is for)",
            ));
        }
        let token = auth::new_secret("ferry-");
        self.hub
            .store
            .create_token(
                &auth::hash(&token),
                r.name.trim(),
                role.as_str(),
                now_unix_ms(),
            )
            .await
            .map_err(store_status)?;
        tracing::info!(name = %r.name, role = role.as_str(), by = %caller.name, "API token created");
        Ok(Response::new(CreateTokenResponse { token }))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        self.require(&req, Role::Viewer, "reading the ledger")
            .await?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            100
        } else {
            r.limit.min(10_000)
        };
        let cluster = (!r.cluster.is_empty()).then_some(r.cluster.as_str());
        let entries = self
            .hub
            .store
            .history(cluster, limit)
            .await
            .map_err(store_status)?;
        Ok(Response::new(HistoryResponse {
            entries: entries.iter().map(Into::into).collect(),
        }))
    }
}
