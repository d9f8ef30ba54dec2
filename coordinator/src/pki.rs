//! The coordinator's certificate authority: generated on first start (or
//! supplied) and kept in the data dir with owner-only permissions. It signs
//! the serving certificate and every agent's client certificate, whose only
//! SAN names its cluster. Never logs key material.

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca-key.pem"))
}

impl Pki {
    /// Loads the CA from `dir`, creating it on first start.
    pub fn open(dir: &Path, lifetime: Duration) -> Result<Pki> {
        let (cert_path, key_path) = ca_paths(dir);
        if !cert_path.exists() {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
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
            let cert = params.self_signed(&key)?;
            write_private(&key_path, &key.serialize_pem())?;
            write_private(&cert_path, &cert.pem())?;
            tracing::info!(ca = %cert_path.display(), "created the coordinator CA");
        }
        let ca_pem = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem).context("reading the CA key")?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, key).context("reading the CA certificate")?;
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
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "ferry coordinator");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = SystemTime::now()
            .checked_sub(Duration::from_secs(300))
            .unwrap_or(SystemTime::now())
            .into();
        params.not_after = (SystemTime::now() + Duration::from_secs(365 * 86_400)).into();
        let cert = params.signed_by(&key, &self.issuer)?;
        let (c, k) = (dir.join("server.pem"), dir.join("server-key.pem"));
        write_private(&k, &key.serialize_pem())?;
        write_private(&c, &cert.pem())?;
        Ok((c, k))
    }

    /// Signs a CSR for `cluster`: whatever it asks for, the certificate's only
    /// SAN is the cluster name and it is good for client auth only.
    pub fn sign(&self, cluster: &str, csr_pem: &str) -> Result<Issued> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .context("reading the certificate signing request")?;
        let now = SystemTime::now();
        let not_before = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
        let not_after = now + self.lifetime;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::DnsName(
            cluster.try_into().context("cluster name as a DNS name")?,
        )];
        params.distinguished_name.push(DnType::CommonName, cluster);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_bytes(16)));
        csr.params = params;
        let cert = csr.signed_by(&self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
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

/// The cluster a verified client certificate names: its single DNS SAN.
pub fn cluster_of(cert_der: &[u8]) -> Result<String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).context("parsing the client certificate")?;
    let san = cert
        .subject_alternative_name()
        .context("reading the SAN")?
        .context("the client certificate has no SAN")?;
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("the client certificate must name exactly one cluster, it names {names:?}"),
    }
}
