//! Dialling the coordinator: one endpoint builder for the agent and the CLI,
//! so both get the same TLS rules.

use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Why an endpoint could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The address is not a URL tonic accepts.
    #[error("bad coordinator address {addr:?}: {message}")]
    Address { addr: String, message: String },
    /// A TLS file could not be read.
    #[error("reading {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `http://` without the explicit insecure flag.
    #[error("refusing plaintext {0}: use https://, or pass the insecure flag for a dev setup")]
    Plaintext(String),
    /// https:// without a CA to verify the coordinator against.
    #[error("a CA certificate is required to verify the coordinator at {0}")]
    NoCa(String),
    /// No address answered (the last one's error).
    #[error("connecting to {addr}: {source}")]
    Unreachable {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// How to reach the coordinator.
#[derive(Clone, Debug, Default)]
pub struct DialConfig {
    /// `https://host:port` (or `http://` with `insecure`); several
    /// coordinator replicas' addresses separated by commas.
    pub addr: String,
    /// CA that signed the coordinator's certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate and key for mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Client certificate and key (PEM) held in memory; preferred over files.
    pub identity: Option<(String, String)>,
    /// Allow plaintext `http://`.
    pub insecure: bool,
}

fn read(p: &PathBuf) -> Result<Vec<u8>, DialError> {
    std::fs::read(p).map_err(|source| DialError::File {
        path: p.clone(),
        source,
    })
}

impl DialConfig {
    /// The addresses `addr` lists: one coordinator's, or several replicas'.
    pub fn addresses(&self) -> Vec<&str> {
        self.addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect()
    }

    /// Connects to the first of the addresses that answers, trying them in
    /// turn from the `first`-th (modulo their count): a replica that is down
    /// costs a failed connect, not the link. (One DNS name with several
    /// records needs no list: each resolved address is tried in turn.)
    /// Returns the channel and the index of the address that answered.
    pub async fn connect_from(&self, first: usize) -> Result<(Channel, usize), DialError> {
        let addrs = self.addresses();
        if addrs.is_empty() {
            return Err(DialError::Address {
                addr: self.addr.clone(),
                message: "no address".into(),
            });
        }
        let mut last = None;
        for k in 0..addrs.len() {
            let i = (first + k) % addrs.len();
            let one = DialConfig {
                addr: addrs[i].to_string(),
                ..self.clone()
            };
            match one.endpoint()?.connect().await {
                Ok(channel) => return Ok((channel, i)),
                Err(source) => {
                    last = Some(DialError::Unreachable {
                        addr: addrs[i].to_string(),
                        source,
                    });
                }
            }
        }
        Err(last.expect("at least one address was tried"))
    }

    pub fn endpoint(&self) -> Result<Endpoint, DialError> {
        let bad = |m: &dyn std::fmt::Display| DialError::Address {
            addr: self.addr.clone(),
            message: m.to_string(),
        };
        let uri: tonic::codegen::http::Uri = self.addr.parse().map_err(|e| bad(&e))?;
        let mut ep = Endpoint::from_shared(self.addr.clone())
            .map_err(|e| bad(&e))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        match uri.scheme_str() {
            Some("https") => {
                let ca = self
                    .ca
                    .as_ref()
                    .ok_or_else(|| DialError::NoCa(self.addr.clone()))?;
                let mut tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read(ca)?))
                    .domain_name(uri.host().unwrap_or("localhost").to_string());
                if let Some((c, k)) = &self.identity {
                    tls = tls.identity(Identity::from_pem(c, k));
                } else if let (Some(c), Some(k)) = (&self.cert, &self.key) {
                    tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
                }
                ep = ep.tls_config(tls).map_err(|e| bad(&e))?;
            }
            Some("http") if self.insecure => {}
            Some("http") => return Err(DialError::Plaintext(self.addr.clone())),
            _ => {
                return Err(bad(
                    &"the scheme must be https:// (or http:// with insecure)",
                ));
            }
        }
        Ok(ep)
    }
}

/// Adds `authorization: Bearer TOKEN` to every request (Admin API).
#[derive(Clone, Debug, Default)]
pub struct Bearer(pub Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// A bearer token; an empty one adds nothing.
    pub fn new(token: &str) -> Result<Self, DialError> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(Bearer(None));
        }
        let v = format!("Bearer {token}")
            .parse()
            .map_err(|_| DialError::Address {
                addr: String::new(),
                message: "the API token has characters a header cannot carry".into(),
            })?;
        Ok(Bearer(Some(v)))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}
