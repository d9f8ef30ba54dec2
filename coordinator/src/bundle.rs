//! Signed bundles: how commits cross an air gap as one file.
//!
//! A bundle file is three lines and a payload:
//!
//! ```text
//! ferry-bundle 1
//! {"refs":{…},"prerequisites":[…],"payloadBytes":…,"payloadSha256":"…",…}
//! <Ed25519 signature of the first two lines, base64>
//! <a Git bundle (git bundle create)>
//! ```
//!
//! The signature covers the manifest, and the manifest the payload (its
//! length and sha256), so any flipped byte, a truncated file or a manifest
//! changed by hand is refused before Git ever reads the payload. Keys are
//! Ed25519 (aws-lc-rs, already the coordinator's crypto); a key is known by
//! its fingerprint, `SHA256:` and the base64 of the public key's hash.

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

pub const MAGIC: &str = "ferry-bundle 1";
const PUBLIC: &str = "ferry-bundle-ed25519";
const PRIVATE: &str = "ferry-bundle-ed25519-private";
/// The longest manifest line read.
const MAX_MANIFEST: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a Ferry bundle (no \"{1}\" header)")]
    NotABundle(PathBuf, &'static str),
    #[error("{path}: the manifest is unreadable: {why}")]
    Manifest { path: PathBuf, why: String },
    #[error("{path}: signed by key {key}, which is not among the trusted keys ({trusted})")]
    Untrusted {
        path: PathBuf,
        key: String,
        trusted: String,
    },
    #[error(
        "{path}: the signature does not verify: the manifest was changed or signed by another key"
    )]
    BadSignature { path: PathBuf },
    #[error("{path}: truncated: the payload is {have} bytes, the manifest says {want}")]
    Truncated { path: PathBuf, have: u64, want: u64 },
    #[error("{path}: the payload is {have} bytes, longer than the {want} the manifest says")]
    TooLong { path: PathBuf, have: u64, want: u64 },
    #[error(
        "{path}: the payload's sha256 is {have}, the manifest says {want}: the file was changed"
    )]
    Tampered {
        path: PathBuf,
        have: String,
        want: String,
    },
    #[error("{path}: the Git bundle inside does not match its manifest: {why}")]
    Mismatch { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    Key { path: PathBuf, why: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a bundle carries, signed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// Ref name -> commit, as the importing mirror will have them.
    pub refs: BTreeMap<String, String>,
    /// Commits the mirror must already hold.
    pub prerequisites: Vec<String>,
    /// The bundle this one follows (`--since-bundle`): the one carrying
    /// the prerequisites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_bundle: Option<String>,
    /// A rollout plan (YAML, as `ferry rollout start -f` reads) for the
    /// site's own coordinator to run once the bundle is imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    pub payload_bytes: u64,
    pub payload_sha256: String,
    pub created_by: String,
    pub created_unix_ms: i64,
    /// The signing key's fingerprint.
    pub key: String,
}

/// A public key, as trusted by an importer.
#[derive(Clone, Debug)]
pub struct PublicKey {
    pub bytes: Vec<u8>,
}

impl PublicKey {
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.bytes)
    }

    /// Reads a `ferry-bundle-ed25519 BASE64` file.
    pub fn read(path: &Path) -> Result<PublicKey> {
        let bytes = key_file(path, PUBLIC, "public key")?;
        if bytes.len() != 32 {
            return Err(Error::Key {
                path: path.to_path_buf(),
                why: "not an Ed25519 public key".into(),
            });
        }
        Ok(PublicKey { bytes })
    }
}

/// The bytes of a `PREFIX BASE64` key file (`ferry bundle keygen`'s).
fn key_file(path: &Path, prefix: &str, what: &str) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let bad = |why: String| Error::Key {
        path: path.to_path_buf(),
        why,
    };
    let b64 = text
        .trim()
        .strip_prefix(prefix)
        .map(str::trim)
        .ok_or_else(|| {
            bad(format!(
                "not a Ferry bundle {what} (ferry bundle keygen writes them)"
            ))
        })?;
    STANDARD
        .decode(b64)
        .map_err(|_| bad("the key is not base64".into()))
}

fn fingerprint(public: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public);
    format!("SHA256:{}", STANDARD_NO_PAD.encode(d.as_ref()))
}

/// A signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// A new key: (private file text, public file text).
    pub fn generate() -> (String, String) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system RNG works");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a key just made");
        (
            format!("{PRIVATE} {}\n", STANDARD.encode(pkcs8.as_ref())),
            format!("{PUBLIC} {}\n", STANDARD.encode(pair.public_key().as_ref())),
        )
    }

    pub fn read(path: &Path) -> Result<SigningKey> {
        let der = key_file(path, PRIVATE, "signing key")?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| Error::Key {
            path: path.to_path_buf(),
            why: "not an Ed25519 private key".into(),
        })?;
        Ok(SigningKey { pair })
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(self.pair.public_key().as_ref())
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            bytes: self.pair.public_key().as_ref().to_vec(),
        }
    }
}

/// The signed part of a file: its header line and its manifest.
fn signed_text(magic: &str, manifest_json: &str) -> String {
    format!("{magic}\n{manifest_json}")
}

/// A file's id: the first 12 hex digits of its signed text's sha256.
fn id_of(magic: &str, manifest_json: &str) -> String {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        signed_text(magic, manifest_json).as_bytes(),
    );
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// What every signed file's manifest says of its signer and payload.
pub trait Signed: Serialize + serde::de::DeserializeOwned {
    /// The header line.
    const MAGIC: &'static str;
    fn key(&self) -> &str;
    /// (length, sha256 hex)
    fn payload(&self) -> (u64, &str);
}

impl Signed for Manifest {
    const MAGIC: &'static str = MAGIC;
    fn key(&self) -> &str {
        &self.key
    }
    fn payload(&self) -> (u64, &str) {
        (self.payload_bytes, &self.payload_sha256)
    }
}

/// What a site's status export carries, signed: a site coordinator's
/// clusters and ledger (an encoded `SiteStatus` as the payload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusManifest {
    pub site: String,
    pub exported_unix_ms: i64,
    pub clusters: u64,
    pub entries: u64,
    pub payload_bytes: u64,
    pub payload_sha256: String,
    pub created_by: String,
    pub key: String,
}

impl Signed for StatusManifest {
    const MAGIC: &'static str = "ferry-status 1";
    fn key(&self) -> &str {
        &self.key
    }
    fn payload(&self) -> (u64, &str) {
        (self.payload_bytes, &self.payload_sha256)
    }
}

/// sha256 (hex) and length of a file.
pub fn file_digest(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    digest(&mut f).map_err(io(path))
}

/// Writes `manifest`, its signature and the payload at `payload` to `out`
/// (atomically: a temporary file beside it, renamed). Returns the id.
pub fn write_signed<M: Signed>(
    out: &Path,
    manifest: &M,
    payload: &Path,
    key: &SigningKey,
) -> Result<String> {
    let json = serde_json::to_string(manifest).expect("a manifest serializes");
    let sig = key.pair.sign(signed_text(M::MAGIC, &json).as_bytes());
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(out))?;
    {
        use std::io::Write;
        let w = tmp.as_file_mut();
        write!(
            w,
            "{}\n{}\n",
            signed_text(M::MAGIC, &json),
            STANDARD.encode(sig.as_ref())
        )
        .map_err(io(out))?;
        let mut p = std::fs::File::open(payload).map_err(io(payload))?;
        std::io::copy(&mut p, w).map_err(io(out))?;
        w.sync_all().map_err(io(out))?;
    }
    tmp.persist(out).map_err(|e| Error::Io {
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(id_of(M::MAGIC, &json))
}

/// A signed file that verified.
#[derive(Debug)]
pub struct Checked<M> {
    pub manifest: M,
    /// Its id (the sha256 of its signed text, shortened).
    pub id: String,
    /// Where the payload starts in the file.
    pub payload_offset: u64,
}

/// Checks a signed file against trusted keys: header, signature, payload
/// length and sha256.
pub fn verify_signed<M: Signed>(path: &Path, trusted: &[PublicKey]) -> Result<Checked<M>> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    let mut r = std::io::BufReader::new(f);
    let mut magic = String::new();
    r.by_ref()
        .take(64)
        .read_line(&mut magic)
        .map_err(io(path))?;
    if magic.trim_end_matches('\n') != M::MAGIC {
        return Err(Error::NotABundle(path.to_path_buf(), M::MAGIC));
    }
    let mut json = String::new();
    r.by_ref()
        .take(MAX_MANIFEST as u64)
        .read_line(&mut json)
        .map_err(io(path))?;
    let mut sig = String::new();
    r.by_ref().take(256).read_line(&mut sig).map_err(io(path))?;
    let offset = (magic.len() + json.len() + sig.len()) as u64;
    let json = json.trim_end_matches('\n').to_string();
    let manifest: M = serde_json::from_str(&json).map_err(|e| Error::Manifest {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let Some(key) = trusted.iter().find(|k| k.fingerprint() == manifest.key()) else {
        return Err(Error::Untrusted {
            path: path.to_path_buf(),
            key: manifest.key().to_string(),
            trusted: trusted
                .iter()
                .map(PublicKey::fingerprint)
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let sig = STANDARD
        .decode(sig.trim_end_matches('\n'))
        .map_err(|_| Error::BadSignature {
            path: path.to_path_buf(),
        })?;
    UnparsedPublicKey::new(&ED25519, &key.bytes)
        .verify(signed_text(M::MAGIC, &json).as_bytes(), &sig)
        .map_err(|_| Error::BadSignature {
            path: path.to_path_buf(),
        })?;
    let (sha, len) = digest(&mut r).map_err(io(path))?;
    let (want_len, want_sha) = manifest.payload();
    if len < want_len {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            have: len,
            want: want_len,
        });
    }
    if len > want_len {
        return Err(Error::TooLong {
            path: path.to_path_buf(),
            have: len,
            want: want_len,
        });
    }
    if sha != want_sha {
        return Err(Error::Tampered {
            path: path.to_path_buf(),
            have: sha,
            want: want_sha.to_string(),
        });
    }
    Ok(Checked {
        id: id_of(M::MAGIC, &json),
        manifest,
        payload_offset: offset,
    })
}

/// The payload of a verified file.
pub fn read_payload<M>(path: &Path, v: &Checked<M>, max: u64) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(v.payload_offset)).map_err(io(path))?;
    let mut out = vec![];
    f.take(max).read_to_end(&mut out).map_err(io(path))?;
    Ok(out)
}

/// sha256 (hex) and length of a stream.
fn digest(r: &mut impl Read) -> std::io::Result<(String, u64)> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        ctx.update(&buf[..k]);
        n += k as u64;
    }
    let hex = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((hex, n))
}

/// The refs and prerequisites a Git bundle's header declares.
pub fn git_header(path: &Path) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    parse_git_header(&mut std::io::BufReader::new(f), path)
}

fn parse_git_header(
    r: &mut impl BufRead,
    path: &Path,
) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let bad = |why: &str| Error::Mismatch {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let mut line = String::new();
    let mut refs = BTreeMap::new();
    let mut prereqs = vec![];
    let mut first = true;
    loop {
        line.clear();
        let n = r
            .by_ref()
            .take(64 << 10)
            .read_line(&mut line)
            .map_err(io(path))?;
        if n == 0 {
            return Err(bad("the Git bundle header ends early"));
        }
        let l = line.trim_end_matches('\n');
        if first {
            if l != "# v2 git bundle" && l != "# v3 git bundle" {
                return Err(bad("no Git bundle header"));
            }
            first = false;
            continue;
        }
        if l.is_empty() {
            return Ok((refs, prereqs));
        }
        if l.starts_with('@') {
            continue;
        }
        if let Some(p) = l.strip_prefix('-') {
            prereqs.push(p.split(' ').next().unwrap_or("").to_string());
        } else if let Some((oid, name)) = l.split_once(' ') {
            refs.insert(name.to_string(), oid.to_string());
        } else {
            return Err(bad("a header line is neither a ref nor a prerequisite"));
        }
    }
}

/// Writes a signed bundle of the Git bundle at `payload` to `out`
/// (atomically: a temporary file beside it, renamed).
pub fn write(
    out: &Path,
    payload: &Path,
    since_bundle: Option<String>,
    plan: Option<String>,
    created_by: &str,
    key: &SigningKey,
) -> Result<(Manifest, String)> {
    let (refs, prerequisites) = git_header(payload)?;
    let (sha, len) = file_digest(payload)?;
    let manifest = Manifest {
        refs,
        prerequisites,
        since_bundle,
        plan,
        payload_bytes: len,
        payload_sha256: sha,
        created_by: created_by.to_string(),
        created_unix_ms: ferry_proto::now_unix_ms(),
        key: key.fingerprint(),
    };
    let id = write_signed(out, &manifest, payload, key)?;
    Ok((manifest, id))
}

/// A bundle that verified.
pub type Verified = Checked<Manifest>;

/// Checks a bundle against trusted keys (as [`verify_signed`]), and that
/// the Git bundle declares what the manifest says.
pub fn verify(path: &Path, trusted: &[PublicKey]) -> Result<Verified> {
    let v = verify_signed::<Manifest>(path, trusted)?;
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(v.payload_offset)).map_err(io(path))?;
    let (refs, prereqs) = parse_git_header(&mut std::io::BufReader::new(f), path)?;
    if refs != v.manifest.refs || prereqs != v.manifest.prerequisites {
        return Err(Error::Mismatch {
            path: path.to_path_buf(),
            why: "its refs or prerequisites differ".into(),
        });
    }
    Ok(v)
}

/// Copies the Git bundle out of a verified bundle file, for git to read.
pub fn extract(path: &Path, v: &Verified, to: &Path) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(v.payload_offset)).map_err(io(path))?;
    let mut out = std::fs::File::create(to).map_err(io(to))?;
    std::io::copy(&mut f, &mut out).map_err(io(to))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in Git bundle (the header is all `verify` reads of it).
    fn payload(dir: &Path) -> PathBuf {
        let p = dir.join("x.bundle");
        let mut data = format!(
            "# v2 git bundle\n-{} base\n{} refs/heads/main\n\n",
            "a".repeat(40),
            "b".repeat(40)
        )
        .into_bytes();
        data.extend((0..5000u32).map(|i| (i % 251) as u8));
        std::fs::write(&p, data).unwrap();
        p
    }

    fn keys(dir: &Path, name: &str) -> (SigningKey, PublicKey) {
        let (private, public) = SigningKey::generate();
        std::fs::write(dir.join(name), private).unwrap();
        std::fs::write(dir.join(format!("{name}.pub")), public).unwrap();
        (
            SigningKey::read(&dir.join(name)).unwrap(),
            PublicKey::read(&dir.join(format!("{name}.pub"))).unwrap(),
        )
    }

    #[test]
    fn a_bundle_verifies_and_every_change_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = keys(dir.path(), "k");
        let (_, other) = keys(dir.path(), "other");
        let out = dir.path().join("b.ferry");
        let (m, id) = write(&out, &payload(dir.path()), None, None, "me@here", &key).unwrap();
        assert_eq!(m.prerequisites, ["a".repeat(40)]);
        assert_eq!(m.refs["refs/heads/main"], "b".repeat(40));
        let v = verify(&out, std::slice::from_ref(&public)).unwrap();
        assert_eq!((v.id, v.manifest), (id, m));

        let good = std::fs::read(&out).unwrap();
        let with = |bytes: Vec<u8>| {
            let p = dir.path().join("bad.ferry");
            std::fs::write(&p, bytes).unwrap();
            verify(&p, std::slice::from_ref(&public))
                .unwrap_err()
                .to_string()
        };
        // Untrusted key.
        let e = verify(&out, &[other]).unwrap_err().to_string();
        assert!(e.contains("not among the trusted keys"), "{e}");
        // A flipped byte in the payload, in the manifest, in the signature.
        let mut b = good.clone();
        let last = b.len() - 10;
        b[last] ^= 1;
        assert!(with(b).contains("sha256"));
        let mut b = good.clone();
        let at = good
            .windows(12)
            .position(|w| w == b"\"createdBy\":")
            .unwrap();
        b[at + 14] ^= 1;
        assert!(with(b).contains("signature does not verify"));
        // Truncated; longer.
        assert!(with(good[..good.len() - 1].to_vec()).contains("truncated"));
        let mut b = good.clone();
        b.push(0);
        assert!(with(b).contains("longer than"));
        // Not a bundle at all.
        assert!(with(b"hello".to_vec()).contains("not a Ferry bundle"));
    }
}
