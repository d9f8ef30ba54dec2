//! The agent's identity: its own key and a client certificate from the
//! coordinator's CA naming its cluster. Obtained once with a one-time join
//! token (a certificate signing request over server-authenticated TLS),
//! kept in a Secret in the agent's namespace, and renewed at two thirds of
//! its lifetime over the existing identity. The key never leaves the cluster.

use crate::state::{MANAGER, ensure_namespace};
use ferry_proto::v1::enrollment_client::EnrollmentClient;
use ferry_proto::v1::{EnrollRequest, EnrollResponse, RenewRequest};
use ferry_proto::{DialConfig, now_unix_ms};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The default name of the Secret holding key, certificate and CA.
pub const SECRET: &str = "ferry-agent-identity";

/// Where the identity is kept in the cluster: a Secret in the agent's
/// namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub namespace: String,
    pub secret: String,
}

impl Place {
    /// The default Secret in `namespace`.
    pub fn new(namespace: impl Into<String>) -> Place {
        Place {
            namespace: namespace.into(),
            secret: SECRET.into(),
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.secret)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator refused the join token or the certificate.
    #[error("the coordinator refused enrollment: {}", .0.message())]
    Refused(#[source] tonic::Status),
    /// The coordinator answered for another cluster.
    #[error("the join token is for cluster {theirs}, not {ours}")]
    WrongCluster { theirs: String, ours: String },
    /// The coordinator could not be reached.
    #[error("reaching the coordinator to enroll: {0}")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Making the key or the request failed.
    #[error("making a key and certificate request: {0}")]
    Key(#[source] rcgen::Error),
    /// Reading or writing the Secret failed.
    #[error("the identity Secret {place}: {source}")]
    Secret {
        place: Place,
        #[source]
        source: kube::Error,
    },
    /// Pre-provisioned certificate files could not be read.
    #[error("reading {}: {source}", .path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The cluster has no identity and no join token to get one.
    #[error(
        "cluster {0} has no identity yet: start the agent with --join-token (from `ferry cluster add`)"
    )]
    NoJoinToken(String),
}

impl Error {
    /// Whether trying again may succeed: the coordinator or the cluster's
    /// API was unreachable. A refusal stands until an operator acts.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unreachable(_) | Error::Secret { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    /// When the certificate was received (Unix ms).
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

impl Identity {
    /// When to renew: two thirds into the certificate's lifetime.
    pub fn renew_at_ms(&self) -> i64 {
        self.not_before_ms + (self.not_after_ms - self.not_before_ms) * 2 / 3
    }
}

fn request(cluster: &str) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate().map_err(Error::Key)?;
    let mut params =
        rcgen::CertificateParams::new(vec![cluster.to_string()]).map_err(Error::Key)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cluster);
    let csr = params.serialize_request(&key).map_err(Error::Key)?;
    let pem = csr.pem().map_err(Error::Key)?;
    Ok((key.serialize_pem(), pem))
}

fn identity(r: EnrollResponse, key_pem: String) -> Identity {
    // Renewal counts from when the certificate arrived: its notBefore is
    // backdated for clock skew, which would pull renewal forward.
    let received = now_unix_ms();
    Identity {
        cert_pem: r.cert_pem,
        key_pem,
        ca_pem: r.ca_pem,
        not_before_ms: received.max(r.not_before_unix_ms),
        not_after_ms: r.not_after_unix_ms,
    }
}

fn classify(s: tonic::Status) -> Error {
    match s.code() {
        tonic::Code::Unauthenticated
        | tonic::Code::PermissionDenied
        | tonic::Code::InvalidArgument
        | tonic::Code::FailedPrecondition => Error::Refused(s),
        _ => Error::Unreachable(Box::new(s)),
    }
}

/// Enrolls with a join token; `dial` must not carry a client identity.
pub async fn enroll(dial: &DialConfig, cluster: &str, join_token: &str) -> Result<Identity> {
    let (key_pem, csr_pem) = request(cluster)?;
    let (channel, _) = dial
        .connect_from(0)
        .await
        .map_err(|e| Error::Unreachable(Box::new(e)))?;
    let r = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            join_token: join_token.trim().to_string(),
            csr_pem,
        })
        .await
        .map_err(classify)?
        .into_inner();
    if r.cluster != cluster {
        return Err(Error::WrongCluster {
            theirs: r.cluster,
            ours: cluster.to_string(),
        });
    }
    Ok(identity(r, key_pem))
}

/// Renews over the current identity (with a fresh key).
pub async fn renew(dial: &DialConfig, cluster: &str, current: &Identity) -> Result<Identity> {
    let (key_pem, csr_pem) = request(cluster)?;
    let mut dial = dial.clone();
    dial.identity = Some((current.cert_pem.clone(), current.key_pem.clone()));
    let (channel, _) = dial
        .connect_from(0)
        .await
        .map_err(|e| Error::Unreachable(Box::new(e)))?;
    let r = EnrollmentClient::new(channel)
        .renew(RenewRequest { csr_pem })
        .await
        .map_err(classify)?
        .into_inner();
    Ok(identity(r, key_pem))
}

fn secrets(client: &kube::Client, ns: &str) -> Api<Secret> {
    Api::namespaced(client.clone(), ns)
}

/// Reads the identity kept in the cluster.
fn secret_err(place: &Place) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |source| Error::Secret {
        place: place.clone(),
        source,
    }
}

pub async fn load(client: &kube::Client, place: &Place) -> Result<Option<Identity>> {
    let err = secret_err(place);
    let api = secrets(client, &place.namespace);
    let Some(s) = api.get_opt(&place.secret).await.map_err(err)? else {
        return Ok(None);
    };
    let data = s.data.unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    };
    let ann = s.metadata.annotations.unwrap_or_default();
    let ms = |k: &str| ann.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    let id = Identity {
        cert_pem: text("tls.crt"),
        key_pem: text("tls.key"),
        ca_pem: text("ca.crt"),
        not_before_ms: ms("ferry.dev/not-before"),
        not_after_ms: ms("ferry.dev/not-after"),
    };
    Ok((!id.cert_pem.is_empty() && !id.key_pem.is_empty()).then_some(id))
}

/// Keeps the identity in the cluster.
pub async fn save(client: &kube::Client, place: &Place, id: &Identity) -> Result<()> {
    let ns = &place.namespace;
    ensure_namespace(client, ns)
        .await
        .map_err(secret_err(place))?;
    let body = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": place.secret, "namespace": ns, "annotations": {
            "ferry.dev/not-before": id.not_before_ms.to_string(),
            "ferry.dev/not-after": id.not_after_ms.to_string(),
        }},
        "stringData": {"tls.crt": id.cert_pem, "tls.key": id.key_pem, "ca.crt": id.ca_pem},
    });
    secrets(client, ns)
        .patch(
            &place.secret,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(secret_err(place))?;
    Ok(())
}

/// Where an identity comes from, in order: the Secret in the cluster,
/// pre-provisioned certificate files, enrollment with a join token.
#[derive(Clone, Debug)]
pub struct Source {
    pub cluster: String,
    pub place: Place,
    /// How to reach the coordinator (its `cert`/`key` are the
    /// pre-provisioned files, if any).
    pub dial: DialConfig,
    pub join_token: Option<String>,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

/// The identity kept in the cluster, pre-provisioned files, or a new one
/// from enrollment, retrying what may pass. `None` when told to stop while
/// waiting; an error that will not pass by itself (a refused or missing
/// join token) at once.
pub async fn obtain(
    src: &Source,
    client: &kube::Client,
    stop: &CancellationToken,
) -> Result<Option<Identity>> {
    let mut delay = src.min_backoff;
    loop {
        match obtain_once(src, client).await {
            Ok(id) => return Ok(Some(id)),
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => tracing::warn!(error = %e, "obtaining an identity; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(src.max_backoff);
    }
}

async fn obtain_once(src: &Source, client: &kube::Client) -> Result<Identity> {
    if let Some(id) = load(client, &src.place).await? {
        return Ok(id);
    }
    if let (Some(c), Some(k)) = (&src.dial.cert, &src.dial.key) {
        // Pre-provisioned certificate files: used as they are, not renewed.
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|source| Error::File {
                path: p.clone(),
                source,
            })
        };
        return Ok(Identity {
            cert_pem: read(c)?,
            key_pem: read(k)?,
            ca_pem: String::new(),
            not_before_ms: 0,
            not_after_ms: 0,
        });
    }
    let token = src
        .join_token
        .as_ref()
        .ok_or_else(|| Error::NoJoinToken(src.cluster.clone()))?;
    let mut dial = src.dial.clone();
    dial.cert = None;
    dial.key = None;
    let id = enroll(&dial, &src.cluster, token).await?;
    save(client, &src.place, &id).await?;
    tracing::info!("enrolled: certificate issued and kept in the cluster");
    Ok(id)
}

/// Renews the certificate at two thirds of its lifetime, keeps it in the
/// cluster and hands it to the link; the live session is not interrupted.
pub async fn renew_forever(
    src: Source,
    cluster: std::sync::Arc<crate::cluster::Cluster>,
    mut current: Identity,
    tx: watch::Sender<Option<Identity>>,
    stop: CancellationToken,
) {
    loop {
        let wait = Duration::from_millis((current.renew_at_ms() - now_unix_ms()).max(0) as u64);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match renew(&src.dial, &src.cluster, &current).await {
            Ok(next) => {
                if let Err(e) = save(&cluster.client(), &src.place, &next).await {
                    tracing::warn!(error = %e, "renewed, but keeping the new certificate failed; using it anyway");
                }
                tracing::info!(not_after = next.not_after_ms, "certificate renewed");
                current = next;
                tx.send_replace(Some(current.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the certificate; retrying");
                let left = (current.not_after_ms - now_unix_ms()).max(0) as u64;
                let pause = Duration::from_millis((left / 10).clamp(200, 30_000));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}
