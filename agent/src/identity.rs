//! The agent's identity: its own key and a client certificate from the
//! coordinator's CA naming its cluster. Obtained once with a one-time join
//! token (a certificate signing request over server-authenticated TLS),
//! kept in a Secret in the agent's namespace, and renewed at two thirds of
//! its lifetime over the existing identity. The key never leaves the cluster.

use ferry_proto::DialConfig;
use ferry_proto::v1::enrollment_client::EnrollmentClient;
use ferry_proto::v1::{EnrollRequest, EnrollResponse, RenewRequest};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// The Secret holding key, certificate and CA.
pub const SECRET: &str = "ferry-agent-identity";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator refused the join token or the certificate.
    #[error("the coordinator refused enrollment: {0}")]
    Refused(String),
    /// The coordinator could not be reached.
    #[error("reaching the coordinator to enroll: {0}")]
    Unreachable(String),
    /// Making the key or the request failed.
    #[error("making a key and certificate request: {0}")]
    Key(String),
    /// Reading or writing the Secret failed.
    #[error("the identity Secret {namespace}/{SECRET}: {message}")]
    Secret { namespace: String, message: String },
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
    let key = rcgen::KeyPair::generate().map_err(|e| Error::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![cluster.to_string()])
        .map_err(|e| Error::Key(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cluster);
    let csr = params
        .serialize_request(&key)
        .map_err(|e| Error::Key(e.to_string()))?;
    let pem = csr.pem().map_err(|e| Error::Key(e.to_string()))?;
    Ok((key.serialize_pem(), pem))
}

fn identity(r: EnrollResponse, key_pem: String) -> Identity {
    // Renewal counts from when the certificate arrived: its notBefore is
    // backdated for clock skew, which would pull renewal forward.
    let received = ferry_proto::now_unix_ms();
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
        | tonic::Code::FailedPrecondition => Error::Refused(s.message().to_string()),
        _ => Error::Unreachable(s.message().to_string()),
    }
}

/// Enrolls with a join token; `dial` must not carry a client identity.
pub async fn enroll(dial: &DialConfig, cluster: &str, join_token: &str) -> Result<Identity> {
    let (key_pem, csr_pem) = request(cluster)?;
    let channel = dial
        .endpoint()
        .map_err(|e| Error::Unreachable(e.to_string()))?
        .connect()
        .await
        .map_err(|e| Error::Unreachable(format!("{e}: {:?}", std::error::Error::source(&e))))?;
    let r = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            join_token: join_token.trim().to_string(),
            csr_pem,
        })
        .await
        .map_err(classify)?
        .into_inner();
    if r.cluster != cluster {
        return Err(Error::Refused(format!(
            "the join token is for cluster {}, not {cluster}",
            r.cluster
        )));
    }
    Ok(identity(r, key_pem))
}

/// Renews over the current identity (with a fresh key).
pub async fn renew(dial: &DialConfig, cluster: &str, current: &Identity) -> Result<Identity> {
    let (key_pem, csr_pem) = request(cluster)?;
    let mut dial = dial.clone();
    dial.identity = Some((current.cert_pem.clone(), current.key_pem.clone()));
    let channel = dial
        .endpoint()
        .map_err(|e| Error::Unreachable(e.to_string()))?
        .connect()
        .await
        .map_err(|e| Error::Unreachable(e.to_string()))?;
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
pub async fn load(client: &kube::Client, ns: &str) -> Result<Option<Identity>> {
    let err = |e: kube::Error| Error::Secret {
        namespace: ns.to_string(),
        message: e.to_string(),
    };
    let Some(s) = secrets(client, ns).get_opt(SECRET).await.map_err(err)? else {
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
pub async fn save(client: &kube::Client, ns: &str, id: &Identity) -> Result<()> {
    let err = |e: kube::Error| Error::Secret {
        namespace: ns.to_string(),
        message: e.to_string(),
    };
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    if nss.get_opt(ns).await.map_err(err)?.is_none() {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        nss.patch(
            ns,
            &PatchParams::apply(crate::apply::MANAGER),
            &Patch::Apply(&body),
        )
        .await
        .map_err(err)?;
    }
    let body = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": SECRET, "namespace": ns, "annotations": {
            "ferry.dev/not-before": id.not_before_ms.to_string(),
            "ferry.dev/not-after": id.not_after_ms.to_string(),
        }},
        "stringData": {"tls.crt": id.cert_pem, "tls.key": id.key_pem, "ca.crt": id.ca_pem},
    });
    secrets(client, ns)
        .patch(
            SECRET,
            &PatchParams::apply(crate::apply::MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(err)?;
    Ok(())
}
