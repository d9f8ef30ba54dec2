//! `AgentLink.Session`: one stream per cluster, authenticated by its client
//! certificate. The coordinator answers a Hello with the full assignment and
//! pushes every change; it stores each full status report.

use super::{peer_cluster, store_status};
use crate::hub::Hub;
use crate::metrics::ReportLabels;
use ferry_proto::v1::agent_link_server::AgentLink;
use ferry_proto::v1::{AgentMessage, CoordinatorMessage, agent_message};
use ferry_proto::{now_unix_ms, status, validate_cluster_name};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Status reports (and heartbeats) accepted per second from one agent.
const STATUS_RATE: f64 = 20.0;

/// The largest message an agent may send.
pub const MAX_MESSAGE: usize = 4 << 20;

/// How long an agent has to say Hello after opening its stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentLinkService {
    pub hub: Arc<Hub>,
    /// Plaintext dev mode: no certificates, so the Hello names the cluster.
    pub insecure: bool,
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
            && id.cluster != hello.cluster
        {
            tracing::warn!(certificate = %id.cluster, claimed = %hello.cluster, "refused: a cluster claimed another's name");
            return Err(Status::permission_denied(format!(
                "this certificate belongs to cluster {}, not {}",
                id.cluster, hello.cluster
            )));
        }
        let cluster = hello.cluster.clone();
        let status = match hello.status.map(status::checked).transpose() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(cluster = %cluster, error = %e, "refused a Hello with a malformed status");
                return Err(Status::invalid_argument(format!("the Hello's status: {e}")));
            }
        };
        let labels: BTreeMap<String, String> = hello.labels.into_iter().collect();
        let agent_version = status::agent_version(&hello.agent_version);
        // Also records the session as this coordinator's (for replicas
        // sharing the store), known by when it said hello.
        let hello_ms = now_unix_ms();
        self.hub
            .store
            .hello(
                &cluster,
                identity.as_ref().map(|i| i.generation),
                identity.is_none().then_some(labels),
                &agent_version,
                status,
                hello_ms,
            )
            .await
            .map_err(|e| match e {
                crate::store::Error::UnknownCluster(_) => Status::unauthenticated(e.to_string()),
                crate::store::Error::StaleCertificate { .. } | crate::store::Error::Revoked(_) => {
                    tracing::warn!(cluster = %cluster, error = %e, "refused a certificate");
                    store_status(e)
                }
                other => store_status(other),
            })?;
        tracing::info!(cluster = %cluster, agent_version = %agent_version, "agent connected");

        let (tx, rx) = mpsc::channel(16);
        let errors = tx.clone();
        let id = self.hub.join(&cluster, tx);
        self.hub.resync([cluster.as_str()]).await;

        let hub = self.hub.clone();
        let span = tracing::info_span!("session", cluster = %cluster);
        self.hub.tasks.spawn(
            async move {
                // At most STATUS_RATE reports a second per agent (bursts of
                // that many): past it the reader pauses, so HTTP/2 flow
                // control pushes back and the agent's reports coalesce; no
                // state is lost.
                let mut allowance = STATUS_RATE;
                let mut last = tokio::time::Instant::now();
                loop {
                    let now = tokio::time::Instant::now();
                    allowance = (allowance
                        + now.duration_since(last).as_secs_f64() * STATUS_RATE)
                        .min(STATUS_RATE);
                    last = now;
                    if allowance < 1.0 {
                        tokio::select! {
                            _ = hub.shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs_f64((1.0 - allowance) / STATUS_RATE)) => {}
                        }
                        continue;
                    }
                    allowance -= 1.0;
                    let msg = tokio::select! {
                        _ = hub.shutdown.cancelled() => break,
                        m = inbound.message() => m,
                    };
                    match msg {
                        Ok(Some(AgentMessage {
                            msg: Some(agent_message::Msg::Status(report)),
                        })) => {
                            let count = |result| { hub.metrics.reports.get_or_create(&ReportLabels { result }).inc(); };
                            let report = match status::checked(report) {
                                Ok(r) => r,
                                Err(e) => {
                                    count("malformed");
                                    tracing::warn!(error = %e, "dropped a malformed status report");
                                    continue;
                                }
                            };
                            hub.report(&cluster, report, now_unix_ms());
                        }
                        Ok(Some(AgentMessage {
                            msg: Some(agent_message::Msg::Preview(p)),
                        })) => {
                            hub.answer_preview(&cluster, p);
                        }
                        Ok(Some(_)) => hub.heard(&cluster, now_unix_ms()),
                        Ok(None) => break,
                        // Over the message size cap: say so, to the agent
                        // and in the log, and end the session.
                        Err(e) if matches!(e.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted) => {
                            hub.metrics.reports.get_or_create(&ReportLabels { result: "oversized" }).inc();
                            tracing::warn!(error = %e.message(), "refused an oversized message; ending the session");
                            let _ = errors
                                .send(Box::new(Err(Status::resource_exhausted(format!(
                                    "a message over the {} MiB limit: {}",
                                    MAX_MESSAGE >> 20,
                                    e.message()
                                )))))
                                .await;
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "session stream error");
                            break;
                        }
                    }
                }
                hub.leave(&cluster, id);
                // (A coordinator that stops says so once, for all its
                // sessions.)
                if !hub.shutdown.is_cancelled()
                    && let Err(e) = hub.store.session_ended(&cluster, hello_ms).await
                {
                    tracing::debug!(error = %e, "recording a session's end");
                }
                hub.status_changed.notify_one();
                tracing::info!("agent disconnected");
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            ReceiverStream::new(rx),
            |m| *m,
        ))))
    }
}
