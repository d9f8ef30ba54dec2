//! Whether a commit was signed by a key its verifier trusts: the agent, with
//! keys its own cluster holds, so that no central component (a compromised
//! coordinator, a leaked operator token) can make a cluster run an unsigned
//! commit; and the coordinator, to refuse such a pin early.
//!
//! A policy is a directory of key files (a mounted Secret or ConfigMap):
//! SSH keys in `allowed_signers` form (`ssh-keygen -Y`'s: principals,
//! options `namespaces=`, `valid-after=`, `valid-before=`, then the key),
//! and armored OpenPGP public keys, told apart by their content. In
//! `Commit` mode the commit itself must carry a good signature by a trusted
//! key; in `Tag` mode a signed annotated tag naming the commit must.
//!
//! Verified in-process: SSH signatures (the `SSHSIG` format Git writes with
//! `gpg.format=ssh`) with RustCrypto's `ssh-key`; OpenPGP signatures with
//! `pgp` (rPGP), including key expiry and revocation. Nothing is shelled out.

use crate::Commit;
use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;
use std::fmt;
use std::path::{Path, PathBuf};

/// What must carry the signature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The commit itself.
    #[default]
    Commit,
    /// A signed annotated tag naming the commit.
    Tag,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "commit" => Ok(Mode::Commit),
            "tag" => Ok(Mode::Tag),
            other => Err(format!("{other:?} is not a verify mode (commit or tag)")),
        }
    }
}

/// Who signed, as a trusted key names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// `SSH` or `OpenPGP`.
    pub kind: &'static str,
    /// `SHA256:…` for SSH keys, the hex fingerprint for OpenPGP keys.
    pub fingerprint: String,
    /// The principals (SSH) or user ids (OpenPGP) of the key.
    pub who: String,
    /// The tag that carried the signature, in tag mode.
    pub tag: Option<String>,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.fingerprint)?;
        if !self.who.is_empty() {
            write!(f, " ({})", self.who)?;
        }
        if let Some(t) = &self.tag {
            write!(f, " on tag {t}")?;
        }
        Ok(())
    }
}

/// Why a commit does not verify. `what` names it: `commit 3f2a1b2c` or
/// `tag v1.2 (commit 3f2a1b2c)`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{what} is not signed")]
    NotSigned { what: String },
    #[error("{what} is signed by an untrusted key {key}")]
    Untrusted { what: String, key: String },
    #[error("the signature of {what} does not verify: {why}")]
    BadSignature { what: String, why: String },
    #[error("{what} is signed by key {key}, which expired {when}")]
    Expired {
        what: String,
        key: String,
        when: String,
    },
    #[error("{what} is signed by key {key}, which is revoked")]
    Revoked { what: String, key: String },
    #[error("{what} carries a signature of a kind not supported (SSH and OpenPGP are)")]
    Unsupported { what: String },
    #[error("no signed tag names commit {commit}{}", tried_text(tried))]
    NoSignedTag {
        commit: String,
        /// Each tag that names it, and why it does not do.
        tried: Vec<String>,
    },
    #[error("{what} is not a well-formed Git object: {why}")]
    Malformed { what: String, why: String },
}

fn tried_text(t: &[String]) -> String {
    if t.is_empty() {
        String::new()
    } else {
        format!(" ({})", t.join("; "))
    }
}

/// A key file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("verify keys {}: {why}", .path.display())]
pub struct PolicyError {
    pub path: PathBuf,
    pub why: String,
}

/// One line of an `allowed_signers` file.
#[derive(Clone, Debug)]
struct AllowedSigner {
    principals: String,
    key: ssh_key::PublicKey,
    namespaces: Option<Vec<String>>,
    /// Unix seconds.
    valid_after: Option<i64>,
    valid_before: Option<i64>,
}

/// The keys a verifier trusts, and what must be signed.
#[derive(Clone, Debug)]
pub struct Policy {
    ssh: Vec<AllowedSigner>,
    pgp: Vec<SignedPublicKey>,
    pub mode: Mode,
    /// A digest of the key files, so a changed policy is noticed.
    pub digest: String,
}

/// The namespace Git signs commits and tags in (`ssh-keygen -Y sign -n git`).
const NAMESPACE: &str = "git";

fn policy_err(path: &Path, why: impl Into<String>) -> PolicyError {
    PolicyError {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// `YYYYMMDD[HHMM[SS]][Z]` as Unix seconds (UTC either way).
fn ssh_time(s: &str) -> Option<i64> {
    let s = s.trim_matches('"').trim_end_matches(['Z', 'z']);
    if !s.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&s.len()) {
        return None;
    }
    let n = |a: usize, b: usize| s.get(a..b).map_or(Some(0), |x| x.parse::<i64>().ok());
    let (y, m, d) = (n(0, 4)?, n(4, 6)?, n(6, 8)?);
    let (hh, mm, ss) = (n(8, 10)?, n(10, 12)?, n(12, 14)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Splits `a,b="c,d",e` at commas outside quotes.
fn split_options(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (vec![], String::new(), false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn parse_allowed_signers(path: &Path, text: &str) -> Result<Vec<AllowedSigner>, PolicyError> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: String| policy_err(path, format!("line {}: {why}", i + 1));
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let key_at = tokens
            .iter()
            .position(|t| t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-"))
            .ok_or_else(|| bad("no key (ssh-ed25519, ssh-rsa, ecdsa-… AAAA…)".into()))?;
        if key_at == 0 {
            return Err(bad("no principals before the key".into()));
        }
        let key = ssh_key::PublicKey::from_openssh(&tokens[key_at..].join(" "))
            .map_err(|e| bad(format!("the key does not parse: {e}")))?;
        let mut signer = AllowedSigner {
            principals: tokens[0].trim_matches('"').to_string(),
            key,
            namespaces: None,
            valid_after: None,
            valid_before: None,
        };
        for opt in split_options(&tokens[1..key_at].join(" ")) {
            let (name, value) = opt.split_once('=').unwrap_or((opt.as_str(), ""));
            match name.to_ascii_lowercase().as_str() {
                "namespaces" => {
                    signer.namespaces = Some(
                        value
                            .trim_matches('"')
                            .split(',')
                            .map(|s| s.trim().to_string())
                            .collect(),
                    )
                }
                "valid-after" => {
                    signer.valid_after =
                        Some(ssh_time(value).ok_or_else(|| bad(format!("valid-after={value}")))?)
                }
                "valid-before" => {
                    signer.valid_before =
                        Some(ssh_time(value).ok_or_else(|| bad(format!("valid-before={value}")))?)
                }
                "cert-authority" => {
                    return Err(bad(
                        "cert-authority keys are not supported: list the signing keys".into(),
                    ));
                }
                other => return Err(bad(format!("unknown option {other:?}"))),
            }
        }
        out.push(signer);
    }
    Ok(out)
}

impl Policy {
    /// Reads every key file of `dir` (file names starting with `.` are
    /// skipped: a mounted Secret's bookkeeping). A directory with no key
    /// is a policy that trusts nothing: every commit is refused.
    pub fn load(dir: &Path, mode: Mode) -> Result<Policy, PolicyError> {
        let entries = std::fs::read_dir(dir).map_err(|e| policy_err(dir, e.to_string()))?;
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let mut policy = Policy {
            ssh: vec![],
            pgp: vec![],
            mode,
            digest: String::new(),
        };
        let mut digest = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| policy_err(&f, e.to_string()))?;
            digest.extend_from_slice(f.to_string_lossy().as_bytes());
            digest.extend_from_slice(text.as_bytes());
            if text.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
                let (keys, _) = SignedPublicKey::from_armor_many(text.as_bytes())
                    .map_err(|e| policy_err(&f, format!("OpenPGP keys: {e}")))?;
                for k in keys {
                    let k = k.map_err(|e| policy_err(&f, format!("an OpenPGP key: {e}")))?;
                    k.verify_bindings().map_err(|e| {
                        policy_err(&f, format!("an OpenPGP key's self-signatures: {e}"))
                    })?;
                    policy.pgp.push(k);
                }
            } else {
                policy.ssh.extend(parse_allowed_signers(&f, &text)?);
            }
        }
        policy.digest = format!("{:016x}", fnv(&digest));
        Ok(policy)
    }

    /// How many keys it trusts.
    pub fn keys(&self) -> usize {
        self.ssh.len() + self.pgp.len()
    }

    /// Verifies a commit object (its raw data, as Git stores it).
    pub fn verify_commit(&self, commit: &Commit, data: &[u8]) -> Result<Signer, Refused> {
        let what = format!("commit {}", commit.short());
        let malformed = |e: &dyn fmt::Display| Refused::Malformed {
            what: what.clone(),
            why: e.to_string(),
        };
        let parsed = gix::objs::CommitRef::from_bytes(data, gix::hash::Kind::Sha1)
            .map_err(|e| malformed(&e))?;
        let time = parsed.committer().map(|c| c.seconds()).unwrap_or(0);
        let Some((signature, signed)) =
            gix::objs::CommitRefIter::signature(data, gix::hash::Kind::Sha1)
                .map_err(|e| malformed(&e))?
        else {
            return Err(Refused::NotSigned { what });
        };
        self.check(&what, signature.as_ref(), &signed.to_bstring(), time)
    }

    /// Verifies an annotated tag object that should name `commit`.
    pub fn verify_tag(&self, commit: &Commit, data: &[u8]) -> Result<Signer, Refused> {
        let parsed = gix::objs::TagRef::from_bytes(data, gix::hash::Kind::Sha1).map_err(|e| {
            Refused::Malformed {
                what: format!("a tag of commit {}", commit.short()),
                why: e.to_string(),
            }
        })?;
        let name = parsed.name.to_string();
        let what = format!("tag {name} (commit {})", commit.short());
        if Some(parsed.target()) != gix::ObjectId::from_hex(commit.as_str().as_bytes()).ok() {
            return Err(Refused::Malformed {
                what,
                why: format!("it names {}, not the pinned commit", parsed.target()),
            });
        }
        let time = parsed
            .tagger()
            .ok()
            .flatten()
            .map(|t| t.seconds())
            .unwrap_or(0);
        let Some((signature, signed)) = gix::objs::TagRefIter::signature(data) else {
            return Err(Refused::NotSigned { what });
        };
        let mut signer = self.check(&what, signature.data, &signed.to_bstring(), time)?;
        signer.tag = Some(name);
        Ok(signer)
    }

    /// The first of `tags` (name, object data) that verifies, else why none does.
    pub fn verify_tags(
        &self,
        commit: &Commit,
        tags: &[(String, Vec<u8>)],
    ) -> Result<Signer, Refused> {
        let mut tried = vec![];
        for (_, data) in tags {
            match self.verify_tag(commit, data) {
                Ok(s) => return Ok(s),
                Err(e) => tried.push(e.to_string()),
            }
        }
        Err(Refused::NoSignedTag {
            commit: commit.short().to_string(),
            tried,
        })
    }

    /// The commit's signer under this policy's mode: the commit object, or
    /// the tags naming it.
    pub fn verify(
        &self,
        commit: &Commit,
        data: &[u8],
        tags: &[(String, Vec<u8>)],
    ) -> Result<Signer, Refused> {
        match self.mode {
            Mode::Commit => self.verify_commit(commit, data),
            Mode::Tag => self.verify_tags(commit, tags),
        }
    }

    fn check(
        &self,
        what: &str,
        signature: &[u8],
        signed: &[u8],
        time: i64,
    ) -> Result<Signer, Refused> {
        let text = String::from_utf8_lossy(signature);
        if text.contains("-----BEGIN SSH SIGNATURE-----") {
            self.check_ssh(what, &text, signed, time)
        } else if text.contains("-----BEGIN PGP SIGNATURE-----") {
            self.check_pgp(what, &text, signed)
        } else {
            Err(Refused::Unsupported {
                what: what.to_string(),
            })
        }
    }

    fn check_ssh(
        &self,
        what: &str,
        armored: &str,
        signed: &[u8],
        time: i64,
    ) -> Result<Signer, Refused> {
        let bad = |why: String| Refused::BadSignature {
            what: what.to_string(),
            why,
        };
        let sig = ssh_key::SshSig::from_pem(armored.trim()).map_err(|e| bad(e.to_string()))?;
        if sig.namespace() != NAMESPACE {
            return Err(bad(format!(
                "made for namespace {:?}, not {NAMESPACE:?}",
                sig.namespace()
            )));
        }
        let fingerprint = sig
            .public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string();
        let trusted = self.ssh.iter().find(|s| {
            s.key.key_data() == sig.public_key()
                && s.namespaces
                    .as_ref()
                    .is_none_or(|ns| ns.iter().any(|n| n == NAMESPACE))
        });
        let Some(signer) = trusted else {
            return Err(Refused::Untrusted {
                what: what.to_string(),
                key: fingerprint,
            });
        };
        if let Some(before) = signer.valid_before
            && time >= before
        {
            return Err(Refused::Expired {
                what: what.to_string(),
                key: fingerprint,
                when: "before the commit was made (valid-before)".into(),
            });
        }
        if let Some(after) = signer.valid_after
            && time < after
        {
            return Err(Refused::Untrusted {
                what: what.to_string(),
                key: format!("{fingerprint} (not valid yet when it signed: valid-after)"),
            });
        }
        signer
            .key
            .verify(NAMESPACE, signed, &sig)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Signer {
            kind: "SSH",
            fingerprint,
            who: signer.principals.clone(),
            tag: None,
        })
    }

    fn check_pgp(&self, what: &str, armored: &str, signed: &[u8]) -> Result<Signer, Refused> {
        let bad = |why: String| Refused::BadSignature {
            what: what.to_string(),
            why,
        };
        let (sig, _) = DetachedSignature::from_string(armored).map_err(|e| bad(e.to_string()))?;
        let issuer_fprs: Vec<String> = sig
            .signature
            .issuer_fingerprint()
            .iter()
            .map(|f| hex(f.as_bytes()))
            .collect();
        let issuer_ids: Vec<String> = sig
            .signature
            .issuer_key_id()
            .iter()
            .map(|k| hex(k.as_ref()))
            .collect();
        let named = |fpr: &[u8]| {
            let h = hex(fpr);
            issuer_fprs.contains(&h) || issuer_ids.iter().any(|k| h.ends_with(k.as_str()))
        };
        let shown = issuer_fprs
            .first()
            .or(issuer_ids.first())
            .cloned()
            .unwrap_or_else(|| "(no issuer)".into());
        for key in &self.pgp {
            let primary_fpr = key.fingerprint();
            let who = key
                .details
                .users
                .iter()
                .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            let fingerprint = hex(primary_fpr.as_bytes());
            let verified = if named(primary_fpr.as_bytes()) {
                sig.verify(&key.primary_key, signed).map(|_| ())
            } else if let Some(sub) = key
                .public_subkeys
                .iter()
                .find(|s| named(s.key.fingerprint().as_bytes()))
            {
                if !sub
                    .signatures
                    .iter()
                    .all(|s| s.typ() != Some(pgp::packet::SignatureType::SubkeyRevocation))
                {
                    return Err(Refused::Revoked {
                        what: what.to_string(),
                        key: hex(sub.key.fingerprint().as_bytes()),
                    });
                }
                sig.verify(&sub.key, signed).map(|_| ())
            } else {
                continue;
            };
            verified.map_err(|e| bad(e.to_string()))?;
            if !key.details.revocation_signatures.is_empty() {
                return Err(Refused::Revoked {
                    what: what.to_string(),
                    key: fingerprint,
                });
            }
            if let Some(expired) = pgp_expiry(key)
                && expired <= now_seconds()
            {
                return Err(Refused::Expired {
                    what: what.to_string(),
                    key: fingerprint,
                    when: format!("at {expired} (Unix time)"),
                });
            }
            return Ok(Signer {
                kind: "OpenPGP",
                fingerprint,
                who,
                tag: None,
            });
        }
        Err(Refused::Untrusted {
            what: what.to_string(),
            key: shown,
        })
    }
}

/// When an OpenPGP key expires (Unix seconds), by its newest self-signature.
fn pgp_expiry(key: &SignedPublicKey) -> Option<i64> {
    let created = key.primary_key.created_at().as_secs() as i64;
    let newest = key
        .details
        .users
        .iter()
        .flat_map(|u| u.signatures.iter())
        .chain(key.details.direct_signatures.iter())
        .max_by_key(|s| s.created().map(|t| t.as_secs()).unwrap_or(0))?;
    let valid_for = newest.key_expiration_time()?;
    if valid_for.as_secs() == 0 {
        return None;
    }
    Some(created + valid_for.as_secs() as i64)
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// FNV-1a: a digest of the key files, for noticing a change (not security).
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_times_and_options() {
        assert_eq!(ssh_time("19700101"), Some(0));
        assert_eq!(ssh_time("20240229Z"), Some(1_709_164_800));
        assert_eq!(
            ssh_time("202402291230"),
            Some(1_709_164_800 + 12 * 3600 + 30 * 60)
        );
        assert_eq!(ssh_time("2024-02-29"), None);
        assert_eq!(
            split_options(r#"namespaces="git,file",valid-after=20240101"#),
            vec![r#"namespaces="git,file""#, "valid-after=20240101"]
        );
    }

    #[test]
    fn allowed_signers_lines_parse_or_are_named() {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEtnHcVm3oU/vrRRi+kIls+PoIkFEixwv2T+QvXv5e6B";
        let text = format!(
            "# trusted\nalice@example.com namespaces=\"git\",valid-before=20991231 {key} alice\n\nbob@example.com {key}\n"
        );
        let p = Path::new("allowed_signers");
        let s = parse_allowed_signers(p, &text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].namespaces.as_deref(), Some(&["git".to_string()][..]));
        assert!(s[0].valid_before.is_some());
        let e = parse_allowed_signers(p, "carol@example.com nonsense\n").unwrap_err();
        assert!(
            e.to_string().contains("allowed_signers: line 1: no key"),
            "{e}"
        );
        let e = parse_allowed_signers(p, &format!("x cert-authority {key}")).unwrap_err();
        assert!(e.to_string().contains("cert-authority"), "{e}");
    }
}
