//! The gRPC services: `AgentLink` for agents, `Admin` for the CLI. They map
//! every error to a specific status code with a message naming the cluster,
//! ref or commit.

use crate::driver::{self, Driver};
use crate::hub::Hub;
use crate::repo::{self, Repo};
use crate::store::{self, ClusterRecord, EventRecord, PinChange};
use ferry_proto::v1::admin_server::Admin;
use ferry_proto::v1::agent_link_server::AgentLink;
use ferry_proto::v1::{
    AgentMessage, Cluster, ControlRolloutRequest, CoordinatorMessage, Event, GetClusterRequest,
    GetRolloutRequest, HistoryRequest, HistoryResponse, ListClustersRequest, ListClustersResponse,
    ListRolloutsRequest, ListRolloutsResponse, PinRequest, PinResponse, Rollout, RolloutControl,
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
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentLink for AgentLinkService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
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
        let cluster = hello.cluster.clone();
        let labels: BTreeMap<String, String> = hello.labels.into_iter().collect();
        self.hub
            .store
            .hello(
                &cluster,
                &labels,
                &hello.agent_version,
                hello.status.as_ref(),
                now_unix_ms(),
            )
            .map_err(store_status)?;
        tracing::info!(cluster = %cluster, agent_version = %hello.agent_version, "agent connected");

        let (tx, rx) = mpsc::channel(16);
        let id = self.hub.join(&cluster, tx);
        self.hub.push(&cluster);

        let hub = self.hub.clone();
        tokio::spawn(async move {
            loop {
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

/// Who is acting: the `ferry-actor` metadata the CLI sends, or "anonymous".
fn actor<T>(req: &Request<T>) -> String {
    req.metadata()
        .get("ferry-actor")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .unwrap_or("anonymous")
        .to_string()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_clusters(
        &self,
        _req: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        let clusters = self.hub.store.clusters().map_err(store_status)?;
        Ok(Response::new(ListClustersResponse {
            clusters: clusters.into_iter().map(|c| self.to_proto(c)).collect(),
        }))
    }

    async fn get_cluster(
        &self,
        req: Request<GetClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        let name = req.into_inner().name;
        match self.hub.store.cluster(&name).map_err(store_status)? {
            Some(c) => Ok(Response::new(self.to_proto(c))),
            None => Err(Status::not_found(format!("unknown cluster {name:?}"))),
        }
    }

    async fn pin(&self, req: Request<PinRequest>) -> Result<Response<PinResponse>, Status> {
        let actor = actor(&req);
        let r = req.into_inner();
        if r.clusters.is_empty() {
            return Err(Status::invalid_argument("name at least one cluster to pin"));
        }
        if r.r#ref.trim().is_empty() {
            return Err(Status::invalid_argument("a ref to pin to is required"));
        }
        let mut reason = r.reason.clone();
        for c in &r.clusters {
            if let Some(rollout) = self.hub.store.active_rollout_of(c).map_err(store_status)? {
                if !r.force {
                    return Err(Status::failed_precondition(format!(
                        "cluster {c} is in active rollout {rollout}; pause or abort it, or pin with --force"
                    )));
                }
                reason = format!("{reason} [forced during rollout {rollout}]")
                    .trim()
                    .to_string();
            }
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
                },
                now_unix_ms(),
            )
            .map_err(store_status)?;
        for e in &entries {
            tracing::info!(cluster = %e.cluster, from = %e.from_commit, to = %e.to_commit, actor = %actor, "pinned");
            self.hub.push(&e.cluster);
        }
        Ok(Response::new(PinResponse {
            commit: commit.to_string(),
            entries,
        }))
    }

    async fn set_cluster_path(
        &self,
        req: Request<SetClusterPathRequest>,
    ) -> Result<Response<Cluster>, Status> {
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
        let actor = actor(&req);
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
        _req: Request<ListRolloutsRequest>,
    ) -> Result<Response<ListRolloutsResponse>, Status> {
        let rollouts = self.hub.store.rollouts(false).map_err(store_status)?;
        Ok(Response::new(ListRolloutsResponse {
            rollouts: rollouts.iter().map(driver::to_proto).collect(),
        }))
    }

    async fn control_rollout(
        &self,
        req: Request<ControlRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        let actor = actor(&req);
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
        let r = req.into_inner();
        let filter = (!r.rollout.is_empty()).then_some(r.rollout);
        // Subscribe before reading the backlog, so nothing falls between.
        let mut live = self.driver.events.subscribe();
        let backlog = self
            .hub
            .store
            .events(filter.as_deref(), r.after_id, 10_000)
            .map_err(store_status)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut last = r.after_id;
            for e in backlog {
                last = e.id;
                if tx.send(Ok(event_proto(e))).await.is_err() {
                    return;
                }
            }
            loop {
                let e = tokio::select! {
                    _ = tx.closed() => return,
                    e = live.recv() => match e {
                        Ok(e) => e,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx.send(Err(Status::data_loss("the watch fell behind; watch again from the last event id"))).await;
                            return;
                        }
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
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
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
