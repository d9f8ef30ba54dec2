//! The gRPC services: `AgentLink` for agents, `Admin` for the CLI. They map
//! every error to a specific status code with a message naming the cluster,
//! ref or commit.

use crate::auth::{self, Role, require};
use crate::driver::{self, Driver};
use crate::hub::Hub;
use crate::pki::Pki;
use crate::repo::{self, Repo};
use crate::store::{self, ClusterRecord, EventRecord, PinChange};
use ferry_proto::v1::admin_server::Admin;
use ferry_proto::v1::agent_link_server::AgentLink;
use ferry_proto::v1::enrollment_server::Enrollment;
use ferry_proto::v1::{
    AddClusterRequest, AddClusterResponse, AgentMessage, Cluster, ControlRolloutRequest,
    CoordinatorMessage, CreateTokenRequest, CreateTokenResponse, EnrollRequest, EnrollResponse,
    Event, GetClusterRequest, GetRolloutRequest, HistoryRequest, HistoryResponse,
    ListClustersRequest, ListClustersResponse, ListRolloutsRequest, ListRolloutsResponse,
    PinRequest, PinResponse, RenewRequest, RevokeClusterRequest, Rollout, RolloutControl,
    SetClusterPathRequest, StartRolloutRequest, WatchEventsRequest, agent_message,
};
use ferry_proto::{now_unix_ms, validate_cluster_name};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Status reports (and heartbeats) accepted per second from one agent.
const STATUS_RATE: f64 = 20.0;

/// How long an agent has to say Hello after opening its stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

fn store_status(e: store::Error) -> Status {
    match e {
        store::Error::UnknownCluster(_) | store::Error::UnknownRollout(_) => {
            Status::not_found(e.to_string())
        }
        store::Error::Overlap { .. } => Status::failed_precondition(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

pub struct AgentLinkService {
    pub hub: Arc<Hub>,
    /// Plaintext dev mode: no certificates, so the Hello names the cluster.
    pub insecure: bool,
}

/// The cluster a request's client certificate names (already verified
/// against the coordinator's CA by TLS).
fn peer_cluster<T>(req: &Request<T>) -> Result<String, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate is required: enroll with a join token first")
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    crate::pki::cluster_of(leaf).map_err(|e| Status::unauthenticated(format!("{e:#}")))
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentLink for AgentLinkService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let identity = if self.insecure {
            None
        } else {
            Some(peer_cluster(&request)?)
        };
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 seconds"))??;
        let hello = match first.and_then(|m| m.msg) {
            Some(agent_message::Msg::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Hello",
                ));
            }
        };
        validate_cluster_name(&hello.cluster)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(id) = &identity
            && *id != hello.cluster
        {
            tracing::warn!(certificate = %id, claimed = %hello.cluster, "refused: a cluster claimed another's name");
            return Err(Status::permission_denied(format!(
                "this certificate belongs to cluster {id}, not {}",
                hello.cluster
            )));
        }
        let cluster = hello.cluster.clone();
        let labels: BTreeMap<String, String> = hello.labels.into_iter().collect();
        self.hub
            .store
            .hello(
                &cluster,
                identity.is_none().then_some(&labels),
                &hello.agent_version,
                hello.status.as_ref(),
                now_unix_ms(),
            )
            .map_err(|e| match e {
                store::Error::UnknownCluster(_) | store::Error::Revoked(_) => {
                    Status::unauthenticated(e.to_string())
                }
                other => store_status(other),
            })?;
        tracing::info!(cluster = %cluster, agent_version = %hello.agent_version, "agent connected");

        let (tx, rx) = mpsc::channel(16);
        let id = self.hub.join(&cluster, tx);
        self.hub.push(&cluster);

        let hub = self.hub.clone();
        tokio::spawn(async move {
            // At most STATUS_RATE reports a second per agent (bursts of that
            // many): past it the reader pauses, so HTTP/2 flow control pushes
            // back and the agent's reports coalesce; no state is lost.
            let mut allowance = STATUS_RATE;
            let mut last = tokio::time::Instant::now();
            loop {
                let now = tokio::time::Instant::now();
                allowance = (allowance + now.duration_since(last).as_secs_f64() * STATUS_RATE)
                    .min(STATUS_RATE);
                last = now;
                if allowance < 1.0 {
                    tokio::time::sleep(Duration::from_secs_f64((1.0 - allowance) / STATUS_RATE))
                        .await;
                    continue;
                }
                allowance -= 1.0;
                match inbound.message().await {
                    Ok(Some(AgentMessage {
                        msg: Some(agent_message::Msg::Status(report)),
                    })) => {
                        if let Err(e) = hub.store.report(&cluster, &report, now_unix_ms()) {
                            tracing::error!(cluster = %cluster, error = %e, "storing a status report");
                        }
                        hub.status_changed.notify_one();
                    }
                    Ok(Some(_)) => {
                        let _ = hub.store.seen(&cluster, now_unix_ms());
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(cluster = %cluster, error = %e, "session stream error");
                        break;
                    }
                }
            }
            hub.leave(&cluster, id);
            hub.status_changed.notify_one();
            tracing::info!(cluster = %cluster, "agent disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

pub struct AdminService {
    pub hub: Arc<Hub>,
    pub repo: Arc<Repo>,
    pub driver: Arc<Driver>,
}

pub struct EnrollmentService {
    pub hub: Arc<Hub>,
    pub pki: Option<Arc<Pki>>,
}

impl EnrollmentService {
    fn issue(&self, cluster: &str, csr_pem: &str) -> Result<EnrollResponse, Status> {
        let pki = self.pki.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this coordinator runs without TLS (--insecure) and cannot enroll",
            )
        })?;
        let issued = pki
            .sign(cluster, csr_pem)
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        let ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        };
        tracing::info!(
            cluster,
            not_after = ms(issued.not_after),
            "issued a client certificate"
        );
        Ok(EnrollResponse {
            cluster: cluster.to_string(),
            cert_pem: issued.cert_pem,
            ca_pem: pki.ca_pem.clone(),
            not_before_unix_ms: ms(issued.not_before),
            not_after_unix_ms: ms(issued.not_after),
        })
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let r = req.into_inner();
        let cluster = self
            .hub
            .store
            .redeem(&auth::hash(&r.join_token), now_unix_ms())
            .map_err(|e| match e {
                store::Error::JoinToken(_) | store::Error::Revoked(_) => {
                    Status::unauthenticated(e.to_string())
                }
                other => store_status(other),
            })?;
        Ok(Response::new(self.issue(&cluster, &r.csr_pem)?))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<EnrollResponse>, Status> {
        let cluster = peer_cluster(&req)?;
        if self
            .hub
            .store
            .is_revoked(&cluster)
            .map_err(|e| Status::unauthenticated(e.to_string()))?
        {
            return Err(Status::unauthenticated(format!(
                "cluster {cluster} is revoked"
            )));
        }
        Ok(Response::new(
            self.issue(&cluster, &req.into_inner().csr_pem)?,
        ))
    }
}

fn driver_status(e: driver::Error) -> Status {
    match e {
        driver::Error::Plan(_) => Status::invalid_argument(e.to_string()),
        driver::Error::Phase { .. } => Status::failed_precondition(e.to_string()),
        driver::Error::Store(store::Error::Overlap { .. }) => {
            Status::failed_precondition(e.to_string())
        }
        driver::Error::Store(s) => store_status(s),
        driver::Error::Repo(repo::Error::UnknownRef { .. }) => {
            Status::invalid_argument(e.to_string())
        }
        driver::Error::Repo(_) => Status::unavailable(e.to_string()),
    }
}

fn event_proto(e: EventRecord) -> Event {
    Event {
        id: e.id,
        at_unix_ms: e.at_ms,
        rollout: e.rollout,
        cluster: e.cluster,
        message: e.message,
        actor: e.actor,
    }
}

impl AdminService {
    fn to_proto(&self, c: ClusterRecord) -> Cluster {
        let (path, path_error) = match self.hub.path(&c) {
            Ok(p) => (p, String::new()),
            Err(e) => (String::new(), e),
        };
        Cluster {
            connected: self.hub.connected(&c.name),
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
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_clusters(
        &self,
        req: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        require(&req, Role::Viewer, "listing clusters")?;
        let clusters = self.hub.store.clusters().map_err(store_status)?;
        Ok(Response::new(ListClustersResponse {
            clusters: clusters.into_iter().map(|c| self.to_proto(c)).collect(),
        }))
    }

    async fn get_cluster(
        &self,
        req: Request<GetClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        require(&req, Role::Viewer, "reading a cluster")?;
        let name = req.into_inner().name;
        match self.hub.store.cluster(&name).map_err(store_status)? {
            Some(c) => Ok(Response::new(self.to_proto(c))),
            None => Err(Status::not_found(format!("unknown cluster {name:?}"))),
        }
    }

    async fn pin(&self, req: Request<PinRequest>) -> Result<Response<PinResponse>, Status> {
        let actor = require(&req, Role::Operator, "pinning")?.name;
        let r = req.into_inner();
        if r.clusters.is_empty() {
            return Err(Status::invalid_argument("name at least one cluster to pin"));
        }
        if r.r#ref.trim().is_empty() {
            return Err(Status::invalid_argument("a ref to pin to is required"));
        }
        let mut reason = r.reason.clone();
        let inside = self
            .hub
            .store
            .active_rollouts_of(&r.clusters)
            .map_err(store_status)?;
        if let Some((c, rollout)) = r
            .clusters
            .iter()
            .find_map(|c| inside.get(c).map(|id| (c, id)))
            && !r.force
        {
            return Err(Status::failed_precondition(format!(
                "cluster {c} is in active rollout {rollout}; pause or abort it, or pin with --force"
            )));
        }
        let rollouts: std::collections::BTreeSet<&String> = inside.values().collect();
        for rollout in rollouts {
            reason = format!("{reason} [forced during rollout {rollout}]")
                .trim()
                .to_string();
        }
        let repo = self.repo.clone();
        let reference = r.r#ref.clone();
        let commit = tokio::task::spawn_blocking(move || repo.resolve(&reference))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                repo::Error::UnknownRef { .. } => Status::invalid_argument(e.to_string()),
                other => Status::unavailable(other.to_string()),
            })?;
        let entries = self
            .hub
            .store
            .pin(
                &PinChange {
                    clusters: &r.clusters,
                    commit: &commit,
                    actor: &actor,
                    reason: &reason,
                    rollout: "",
                    allow_mass_prune: r.allow_mass_prune,
                },
                now_unix_ms(),
            )
            .map_err(store_status)?;
        for e in &entries {
            tracing::info!(cluster = %e.cluster, from = %e.from_commit, to = %e.to_commit, actor = %actor, "pinned");
        }
        self.hub
            .push_many(entries.iter().map(|e| e.cluster.as_str()));
        Ok(Response::new(PinResponse {
            commit: commit.to_string(),
            entries,
        }))
    }

    async fn set_cluster_path(
        &self,
        req: Request<SetClusterPathRequest>,
    ) -> Result<Response<Cluster>, Status> {
        require(&req, Role::Operator, "setting a path")?;
        let r = req.into_inner();
        let path = r.path.trim().trim_matches('/');
        if path.split('/').any(|s| s == ".." || s == ".") {
            return Err(Status::invalid_argument(format!("unsafe path {path:?}")));
        }
        self.hub
            .store
            .set_path_override(&r.name, (!path.is_empty()).then_some(path))
            .map_err(store_status)?;
        self.hub.push(&r.name);
        let c = self
            .hub
            .store
            .cluster(&r.name)
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("unknown cluster {:?}", r.name)))?;
        Ok(Response::new(self.to_proto(c)))
    }

    async fn start_rollout(
        &self,
        req: Request<StartRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        let actor = require(&req, Role::Operator, "starting a rollout")?.name;
        let plan = req
            .into_inner()
            .plan
            .ok_or_else(|| Status::invalid_argument("a rollout plan is required"))?;
        let r = self
            .driver
            .start(&plan, &actor)
            .await
            .map_err(driver_status)?;
        Ok(Response::new(driver::to_proto(&r)))
    }

    async fn get_rollout(
        &self,
        req: Request<GetRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        require(&req, Role::Viewer, "reading a rollout")?;
        let id = req.into_inner().id;
        let r = if id.is_empty() {
            self.hub
                .store
                .rollouts(false)
                .map_err(store_status)?
                .into_iter()
                .next()
                .ok_or_else(|| Status::not_found("there are no rollouts yet"))?
        } else {
            self.hub.store.rollout(&id).map_err(store_status)?
        };
        Ok(Response::new(driver::to_proto(&r)))
    }

    async fn list_rollouts(
        &self,
        req: Request<ListRolloutsRequest>,
    ) -> Result<Response<ListRolloutsResponse>, Status> {
        require(&req, Role::Viewer, "listing rollouts")?;
        let rollouts = self.hub.store.rollouts(false).map_err(store_status)?;
        Ok(Response::new(ListRolloutsResponse {
            rollouts: rollouts.iter().map(driver::to_proto).collect(),
        }))
    }

    async fn control_rollout(
        &self,
        req: Request<ControlRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        let actor = require(&req, Role::Operator, "controlling a rollout")?.name;
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
        Ok(Response::new(driver::to_proto(&rec)))
    }

    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

    async fn watch_events(
        &self,
        req: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        require(&req, Role::Viewer, "watching events")?;
        let r = req.into_inner();
        let filter = (!r.rollout.is_empty()).then_some(r.rollout);
        // Subscribe before reading the backlog, so nothing falls between.
        // Whatever the live feed drops (a wave of thousands of pins outruns
        // it) is read again from the store, so a watch never loses events.
        let mut live = self.driver.events.subscribe();
        let store = self.hub.store.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut last = r.after_id;
            loop {
                // Catch up from the store, a page at a time.
                loop {
                    let page = match store.events(filter.as_deref(), last, 1_000) {
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
                        if tx.send(Ok(event_proto(e))).await.is_err() {
                            return;
                        }
                    }
                }
                // Then follow the live feed until it drops something.
                loop {
                    let e = tokio::select! {
                        _ = tx.closed() => return,
                        e = live.recv() => match e {
                            Ok(e) => e,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                            Err(_) => return,
                        },
                    };
                    if e.id <= last || filter.as_deref().is_some_and(|f| f != e.rollout) {
                        continue;
                    }
                    last = e.id;
                    if tx.send(Ok(event_proto(e))).await.is_err() {
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
        let caller = require(&req, Role::Admin, "adding a cluster")?;
        let r = req.into_inner();
        validate_cluster_name(&r.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ttl = if r.token_ttl_seconds <= 0 {
            3600
        } else {
            r.token_ttl_seconds
        };
        let token = auth::new_secret("ferry-join-");
        let expires = now_unix_ms() + ttl * 1000;
        let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        self.hub
            .store
            .add_cluster(
                &r.name,
                &labels,
                &auth::hash(&token),
                expires,
                now_unix_ms(),
            )
            .map_err(store_status)?;
        tracing::info!(cluster = %r.name, by = %caller.name, "cluster added; join token issued");
        let c = self
            .hub
            .store
            .cluster(&r.name)
            .map_err(store_status)?
            .ok_or_else(|| Status::internal("the cluster vanished"))?;
        Ok(Response::new(AddClusterResponse {
            cluster: Some(self.to_proto(c)),
            join_token: token,
            expires_unix_ms: expires,
        }))
    }

    async fn revoke_cluster(
        &self,
        req: Request<RevokeClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        let caller = require(&req, Role::Admin, "revoking a cluster")?;
        let name = req.into_inner().name;
        self.hub
            .store
            .revoke(&name, now_unix_ms())
            .map_err(store_status)?;
        self.hub.close(&name);
        tracing::warn!(cluster = %name, by = %caller.name, "cluster revoked; its session is closed");
        let c = self
            .hub
            .store
            .cluster(&name)
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("unknown cluster {name:?}")))?;
        Ok(Response::new(self.to_proto(c)))
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = require(&req, Role::Admin, "creating tokens")?;
        let r = req.into_inner();
        let role = Role::parse(&r.role).ok_or_else(|| {
            Status::invalid_argument(format!("role {:?}: viewer, operator or admin", r.role))
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
            .map_err(store_status)?;
        tracing::info!(name = %r.name, role = role.as_str(), by = %caller.name, "API token created");
        Ok(Response::new(CreateTokenResponse { token }))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        require(&req, Role::Viewer, "reading the ledger")?;
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
            .map_err(store_status)?;
        Ok(Response::new(HistoryResponse { entries }))
    }
}
