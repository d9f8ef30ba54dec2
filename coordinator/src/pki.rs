//! The coordinator's certificate authority: generated on first start (or
//! supplied) and kept in the data dir with owner-only permissions. It signs
//! the serving certificate and every agent's client certificate, whose only
//! SAN names its cluster. Never logs key material.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key or certificate file could not be read or written.
    #[error("{}: {source}", .path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Making, reading or signing a key or certificate failed.
    #[error("{what}: {source}")]
    Cert {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// A client certificate that does not parse.
    #[error("parsing the client certificate: {0}")]
    Parse(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    /// A client certificate that does not name exactly one cluster.
    #[error("{0}")]
    Identity(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn cert(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |source| Error::Cert {
        what: what.to_string(),
        source,
    }
}

fn file(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::File {
        path: path.to_path_buf(),
        source,
    }
}

pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
    /// How long agent certificates live.
    pub lifetime: Duration,
}

/// A certificate issued to an agent.
pub struct Issued {
    pub cert_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Writes a file only its owner can read, atomically.
pub fn write_private(path: &Path, data: &str) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(file(&tmp))?;
    f.write_all(data.as_bytes()).map_err(file(&tmp))?;
    f.sync_all().map_err(file(&tmp))?;
    std::fs::rename(&tmp, path).map_err(file(path))
}

fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca-key.pem"))
}

impl Pki {
    /// Loads the CA from `dir`, creating it on first start.
    pub fn open(dir: &Path, lifetime: Duration) -> Result<Pki> {
        let (cert_path, key_path) = ca_paths(dir);
        if !cert_path.exists() {
            let key = KeyPair::generate().map_err(cert("generating the CA key"))?;
            let mut params =
                CertificateParams::new(Vec::<String>::new()).map_err(cert("the CA certificate"))?;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params
                .distinguished_name
                .push(DnType::CommonName, "Ferry coordinator CA");
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = SystemTime::now()
                .checked_sub(Duration::from_secs(300))
                .unwrap_or(SystemTime::now())
                .into();
            params.not_after = (SystemTime::now() + Duration::from_secs(10 * 365 * 86_400)).into();
            let ca = params
                .self_signed(&key)
                .map_err(cert("signing the CA certificate"))?;
            write_private(&key_path, &key.serialize_pem())?;
            write_private(&cert_path, &ca.pem())?;
            tracing::info!(ca = %cert_path.display(), "created the coordinator CA");
        }
        Pki::load(&cert_path, &key_path, lifetime)
    }

    /// A CA supplied as files (a mounted `kubernetes.io/tls` Secret's
    /// `tls.crt` and `tls.key`, shared by every replica); RSA or ECDSA.
    pub fn load(cert_path: &Path, key_path: &Path, lifetime: Duration) -> Result<Pki> {
        let ca_pem = std::fs::read_to_string(cert_path).map_err(file(cert_path))?;
        let key_pem = std::fs::read_to_string(key_path).map_err(file(key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(cert("reading the CA key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, key).map_err(cert("reading the CA certificate"))?;
        Ok(Pki {
            issuer,
            ca_pem,
            lifetime,
        })
    }

    pub fn ca_path(dir: &Path) -> PathBuf {
        ca_paths(dir).0
    }

    /// A serving certificate for `names` (DNS names or IPs), written to `dir`.
    pub fn serving(&self, dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate().map_err(cert("generating the serving key"))?;
        let mut params = CertificateParams::new(names.to_vec())
            .map_err(cert("the serving certificate's names"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "ferry coordinator");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = SystemTime::now()
            .checked_sub(Duration::from_secs(300))
            .unwrap_or(SystemTime::now())
            .into();
        params.not_after = (SystemTime::now() + Duration::from_secs(365 * 86_400)).into();
        let serving = params
            .signed_by(&key, &self.issuer)
            .map_err(cert("signing the serving certificate"))?;
        let (c, k) = (dir.join("server.pem"), dir.join("server-key.pem"));
        write_private(&k, &key.serialize_pem())?;
        write_private(&c, &serving.pem())?;
        Ok((c, k))
    }

    /// Signs a CSR for `cluster`: whatever it asks for, the certificate's
    /// only DNS SAN is the cluster name, a URI SAN carries the cluster's
    /// identity generation, and it is good for client auth only.
    pub fn sign(&self, cluster: &str, generation: i64, csr_pem: &str) -> Result<Issued> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(cert("reading the certificate signing request"))?;
        let now = SystemTime::now();
        let not_before = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
        let not_after = now + self.lifetime;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::DnsName(
                cluster
                    .try_into()
                    .map_err(cert("the cluster name as a DNS name"))?,
            ),
            SanType::URI(
                format!("{GENERATION_URN}{generation}")
                    .as_str()
                    .try_into()
                    .map_err(cert("the identity generation as a URI"))?,
            ),
        ];
        params.distinguished_name.push(DnType::CommonName, cluster);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_bytes(16)));
        csr.params = params;
        let issued = csr
            .signed_by(&self.issuer)
            .map_err(cert("signing the client certificate"))?;
        Ok(Issued {
            cert_pem: issued.pem(),
            not_before,
            not_after,
        })
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut b).expect("the system RNG works");
    b
}

/// The URI SAN prefix of the identity generation a client certificate
/// was issued for.
pub const GENERATION_URN: &str = "urn:ferry:identity-generation:";

/// Who a verified client certificate speaks for.
#[derive(Clone, Debug, PartialEq)]
pub struct CertIdentity {
    /// Its single DNS SAN.
    pub cluster: String,
    /// The identity generation it was issued for (0: issued before Ferry
    /// recorded generations).
    pub generation: i64,
}

/// The cluster (and identity generation) a verified client certificate names.
pub fn cluster_of(cert_der: &[u8]) -> Result<CertIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(Error::Parse)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Error::Identity(format!("reading the client certificate's SAN: {e}")))?
        .ok_or_else(|| Error::Identity("the client certificate has no SAN".into()))?;
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    let generations: Vec<i64> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix(GENERATION_URN),
            _ => None,
        })
        .map(|g| {
            g.parse()
                .map_err(|_| Error::Identity(format!("a bad identity generation {g:?}")))
        })
        .collect::<Result<_>>()?;
    let generation = match generations.as_slice() {
        [] => 0,
        [g] => *g,
        _ => {
            return Err(Error::Identity(
                "the client certificate names several identity generations".into(),
            ));
        }
    };
    match names.as_slice() {
        [one] => Ok(CertIdentity {
            cluster: one.clone(),
            generation,
        }),
        _ => Err(Error::Identity(format!(
            "the client certificate must name exactly one cluster, it names {names:?}"
        ))),
    }
}
