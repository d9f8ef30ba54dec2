//! `ferry bundle keygen|create|verify|import`: commits carried across an
//! air gap in one signed file (`crate::bundle`), imported into a site's
//! mirror atomically: objects first, then every ref at once, and only
//! forward.

use super::Args;
use super::mirror::{bare, commits, git, moved, ref_objects, refs, report};
use super::output::short;
use crate::bundle::{self, PublicKey, SigningKey};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand, Debug)]
pub enum BundleCommand {
    /// Make a signing key: KEY (private, owner-only) and KEY.pub (what
    /// importers trust).
    Keygen {
        /// Where to write the private key (the public one goes to KEY.pub).
        #[arg(long = "out")]
        out: PathBuf,
    },
    /// Write one signed file with the commits of REFs (all of them, or
    /// those after --since / --since-bundle).
    Create {
        /// The repository: a local path, or any URL git fetches from.
        #[arg(long)]
        repo: String,
        /// Branch or tag to carry (repeat).
        #[arg(long = "ref", required = true)]
        refs: Vec<String>,
        /// Only commits after this one (which the mirror must hold).
        #[arg(long, conflicts_with = "since_bundle")]
        since: Option<String>,
        /// Only commits after what this earlier bundle carried.
        #[arg(long)]
        since_bundle: Option<PathBuf>,
        /// The signing key (ferry bundle keygen).
        #[arg(long)]
        key: PathBuf,
        /// Who made it (recorded in the manifest; default user@host).
        #[arg(long)]
        creator: Option<String>,
        /// A rollout plan (YAML, as `rollout start -f` reads) for the
        /// site's own coordinator, signed with the commits
        /// (`bundle import --apply` starts it there).
        #[arg(long)]
        plan: Option<PathBuf>,
        /// The bundle file to write.
        #[arg(long = "out")]
        out: PathBuf,
    },
    /// Check a bundle against trusted keys; print its manifest.
    Verify {
        file: PathBuf,
        /// A trusted public key (repeat).
        #[arg(long = "trust", required = true)]
        trust: Vec<PathBuf>,
    },
    /// Verify a bundle and import it into a bare mirror: refs move only
    /// forward, all at once, or not at all.
    Import {
        file: PathBuf,
        /// The mirror (a bare repository, created if missing).
        #[arg(long)]
        into: PathBuf,
        /// A trusted public key (repeat).
        #[arg(long = "trust", required = true)]
        trust: Vec<PathBuf>,
        /// Report to the coordinator what the mirror now holds, as this
        /// site's (a token with the `mirror` role is enough).
        #[arg(long)]
        site: Option<String>,
        /// Start the rollout plan the bundle carries on the coordinator
        /// (the site's own `ferry serve`; an operator token).
        #[arg(long)]
        apply: bool,
    },
    /// Write the coordinator's clusters and ledger to one signed file (run
    /// against a disconnected site's own coordinator), to carry back.
    StatusExport {
        /// The site's name, as the central coordinator knows it.
        #[arg(long)]
        site: String,
        /// The signing key.
        #[arg(long)]
        key: PathBuf,
        /// The file to write.
        #[arg(long = "out")]
        out: PathBuf,
    },
    /// Verify a site's status file and hand it to the coordinator (the
    /// central one): `ferry clusters` then shows the site's clusters, with
    /// their age.
    StatusImport {
        file: PathBuf,
        /// A trusted public key (repeat).
        #[arg(long = "trust", required = true)]
        trust: Vec<PathBuf>,
    },
}

/// The most ledger entries a status export carries.
const EXPORT_HISTORY: u32 = 1000;
/// The largest status payload (one import is one gRPC message).
const MAX_STATUS_BYTES: u64 = 3 << 20;

fn trusted(paths: &[PathBuf]) -> Result<Vec<PublicKey>> {
    paths
        .iter()
        .map(|p| PublicKey::read(p).map_err(anyhow::Error::from))
        .collect()
}

fn creator() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "someone".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "somewhere".into());
    format!("{user}@{host}")
}

/// A ref as the repository names it in full.
fn full_ref(repo: &Path, r: &str) -> Result<String> {
    if r.starts_with("refs/") {
        return Ok(r.to_string());
    }
    for prefix in ["refs/heads/", "refs/tags/"] {
        let name = format!("{prefix}{r}");
        if git(Some(repo), &["rev-parse", "--verify", "--quiet", &name]).is_ok() {
            return Ok(name);
        }
    }
    bail!("ref {r:?} is not a branch or tag of the repository")
}

#[allow(clippy::too_many_arguments)]
fn create(
    repo: &str,
    wanted: &[String],
    since: Option<&str>,
    since_bundle: Option<&Path>,
    key: &Path,
    by: Option<String>,
    plan: Option<&Path>,
    out: &Path,
) -> Result<String> {
    let key = SigningKey::read(key)?;
    // A plan is checked now, not when it reaches the site.
    let plan = match plan {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            super::rollout::parse_plan(&text, &p.display().to_string())?;
            Some(text)
        }
        None => None,
    };
    // A local repository is read in place; anything else is fetched first.
    let scratch = tempfile::tempdir()?;
    let local = Path::new(repo);
    let dir: PathBuf = if local.is_dir() {
        local.to_path_buf()
    } else {
        let d = scratch.path().join("repo.git");
        bare(&d)?;
        git(
            Some(&d),
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                "--",
                repo,
                "refs/heads/*:refs/heads/*",
                "refs/tags/*:refs/tags/*",
            ],
        )
        .with_context(|| format!("fetching {}", ferry_proto::redact(repo)))?;
        d
    };
    let mut args: Vec<String> = vec!["bundle".into(), "create".into(), "--quiet".into()];
    let payload = scratch.path().join("payload.bundle");
    args.push(payload.display().to_string());
    for r in wanted {
        args.push(full_ref(&dir, r)?);
    }
    let mut after = None;
    let mut since_text = String::new();
    if let Some(c) = since {
        let c = git(
            Some(&dir),
            &["rev-parse", "--verify", &format!("{c}^{{commit}}")],
        )
        .with_context(|| format!("--since {c}: not a commit of the repository"))?;
        since_text = format!(" since {}", short(c.trim()));
        args.push(format!("^{}", c.trim()));
    }
    if let Some(old) = since_bundle {
        let v = bundle::verify(old, &[key.public()])
            .with_context(|| "--since-bundle: the earlier bundle must be one this key signed")?;
        for c in v.manifest.refs.values() {
            args.push(format!("^{c}"));
        }
        since_text = format!(" since bundle {}", v.id);
        after = Some(v.id);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Err(e) = git(Some(&dir), &argv) {
        if e.to_string().contains("empty bundle") {
            bail!(
                "nothing to carry: {} has no commits{since_text}",
                wanted.join(", ")
            );
        }
        return Err(e.context("git bundle create"));
    }
    let (m, id) = bundle::write(
        out,
        &payload,
        after,
        plan,
        &by.unwrap_or_else(creator),
        &key,
    )?;
    let mut said = format!(
        "wrote bundle {id} to {} ({} bytes, signed by {})\n",
        out.display(),
        m.payload_bytes,
        m.key
    );
    for (r, c) in &m.refs {
        let _ = writeln!(said, "  {}  {r}", short(c));
    }
    if !m.prerequisites.is_empty() {
        let _ = writeln!(
            said,
            "  needs {} commit(s) the mirror must already hold",
            m.prerequisites.len()
        );
    }
    if m.plan.is_some() {
        let _ = writeln!(said, "  carries a rollout plan for the site's coordinator");
    }
    Ok(said)
}

fn describe(v: &bundle::Verified) -> String {
    let m = &v.manifest;
    let mut out = format!(
        "bundle {}: signed by {}, made by {} at {} ms, {} bytes\n",
        v.id, m.key, m.created_by, m.created_unix_ms, m.payload_bytes
    );
    for (r, c) in &m.refs {
        let _ = writeln!(out, "  {}  {r}", short(c));
    }
    if let Some(s) = &m.since_bundle {
        let _ = writeln!(out, "  follows bundle {s}");
    }
    if m.plan.is_some() {
        let _ = writeln!(out, "  carries a rollout plan for the site's coordinator");
    }
    if !m.prerequisites.is_empty() {
        let _ = writeln!(
            out,
            "  prerequisites: {}",
            m.prerequisites
                .iter()
                .map(|c| short(c).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out
}

/// Imported: what moved (for people), the mirror's refs now, and the
/// rollout plan the bundle carries.
struct Imported {
    said: String,
    refs: BTreeMap<String, String>,
    plan: Option<String>,
}

/// Verifies a bundle and imports it.
fn import(file: &Path, into: &Path, keys: &[PublicKey]) -> Result<Imported> {
    let v = bundle::verify(file, keys)?;
    let m = &v.manifest;
    bare(into)?;
    let shown = into.display();
    // Prerequisites first: name what is missing and what would carry it.
    let missing: Vec<&String> = m
        .prerequisites
        .iter()
        .filter(|c| git(Some(into), &["cat-file", "-e", &format!("{c}^{{commit}}")]).is_err())
        .collect();
    if !missing.is_empty() {
        let carrier = match &m.since_bundle {
            Some(id) => format!("import bundle {id} (the one this follows) first"),
            None => "import a bundle that carries them first (or make this one with --since a commit the mirror holds)".into(),
        };
        bail!(
            "{}: the mirror {shown} lacks prerequisite commit(s) {}: {carrier}; nothing was imported",
            file.display(),
            missing
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let held = ref_objects(into)?;
    let before: BTreeMap<String, String> = held
        .iter()
        .map(|(n, r)| (n.clone(), r.commit.clone()))
        .collect();
    // Objects first, under a namespace of their own (no ref of the mirror
    // moves yet).
    let scratch = tempfile::tempdir()?;
    let payload = scratch.path().join("payload.bundle");
    bundle::extract(file, &v, &payload)?;
    let staging = format!("refs/ferry-import/{}", v.id);
    let p = payload.display().to_string();
    let spec = format!("+refs/*:{staging}/*");
    let cleanup = || {
        for r in m.refs.keys() {
            let _ = git(
                Some(into),
                &[
                    "update-ref",
                    "-d",
                    &format!("{staging}/{}", &r["refs/".len()..]),
                ],
            );
        }
    };
    git(Some(into), &["fetch", "--quiet", "--no-tags", &p, &spec])
        .with_context(|| format!("reading {} into {shown}", file.display()))?;
    // Then every ref at once, and only forward.
    let mut tx = String::from("start\n");
    let mut refused = vec![];
    for (r, new) in &m.refs {
        match held.get(r).map(|h| &h.object) {
            Some(old) if old == new => {}
            Some(old) => {
                let forward = git(Some(into), &["merge-base", "--is-ancestor", old, new]).is_ok();
                if !forward {
                    refused.push(format!("{r} ({} -> {})", short(old), short(new)));
                }
                let _ = writeln!(tx, "update {r} {new} {old}");
            }
            None => {
                let _ = writeln!(tx, "create {r} {new}");
            }
        }
    }
    if !refused.is_empty() {
        cleanup();
        bail!(
            "{}: would move {} backwards or sideways: refused, the mirror {shown} is unchanged",
            file.display(),
            refused.join(", ")
        );
    }
    tx.push_str("prepare\ncommit\n");
    let applied = {
        use std::io::Write;
        let mut child = std::process::Command::new("git")
            .arg("-C")
            .arg(into)
            .args(["update-ref", "--stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running git update-ref")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(tx.as_bytes())?;
        child.wait_with_output()?
    };
    cleanup();
    if !applied.status.success() {
        bail!(
            "{}: updating the mirror's refs failed (none moved): {}",
            file.display(),
            String::from_utf8_lossy(&applied.stderr).trim()
        );
    }
    let after = refs(into)?;
    let mut out = format!("imported bundle {} into {shown}\n", v.id);
    let changes = moved(&before, &after);
    if changes.is_empty() {
        out.push_str("  nothing moved: the mirror held all of it\n");
    }
    for (r, from, to) in changes {
        let _ = writeln!(out, "  {r}  {} -> {}", short(&from), short(&to));
    }
    Ok(Imported {
        said: out,
        refs: after,
        plan: v.manifest.plan,
    })
}

async fn status_export(args: &Args, site: &str, key: &Path, out: &Path) -> Result<String> {
    let key = SigningKey::read(key)?;
    let mut client = super::admin(args).await?;
    let clusters = super::dial::all_clusters(&mut client, 500).await?;
    let history = client
        .history(ferry_proto::v1::HistoryRequest {
            cluster: String::new(),
            limit: EXPORT_HISTORY,
        })
        .await
        .map_err(super::status)?
        .into_inner()
        .entries;
    let exported = ferry_proto::now_unix_ms();
    let status = ferry_proto::v1::SiteStatus {
        site: site.to_string(),
        exported_unix_ms: exported,
        clusters,
        history,
        how: String::new(),
    };
    let bytes = prost::Message::encode_to_vec(&status);
    if bytes.len() as u64 > MAX_STATUS_BYTES {
        bail!(
            "the status of {} clusters is {} bytes, over the {MAX_STATUS_BYTES} one import takes",
            status.clusters.len(),
            bytes.len()
        );
    }
    let scratch = tempfile::tempdir()?;
    let payload = scratch.path().join("status.pb");
    std::fs::write(&payload, &bytes)?;
    let (sha, len) = bundle::file_digest(&payload)?;
    let manifest = bundle::StatusManifest {
        site: site.to_string(),
        exported_unix_ms: exported,
        clusters: status.clusters.len() as u64,
        entries: status.history.len() as u64,
        payload_bytes: len,
        payload_sha256: sha,
        created_by: creator(),
        key: key.fingerprint(),
    };
    let id = bundle::write_signed(out, &manifest, &payload, &key)?;
    Ok(format!(
        "wrote status {id} of site {site} to {}: {} cluster(s), {} ledger entries, signed by {}\n",
        out.display(),
        manifest.clusters,
        manifest.entries,
        manifest.key
    ))
}

async fn status_import(args: &Args, file: &Path, keys: &[PublicKey]) -> Result<String> {
    let v = bundle::verify_signed::<bundle::StatusManifest>(file, keys)?;
    let bytes = bundle::read_payload(file, &v, MAX_STATUS_BYTES)?;
    let mut status: ferry_proto::v1::SiteStatus = prost::Message::decode(bytes.as_slice())
        .with_context(|| format!("{}: the status inside does not decode", file.display()))?;
    if status.site != v.manifest.site || status.exported_unix_ms != v.manifest.exported_unix_ms {
        bail!(
            "{}: the status inside does not match its manifest",
            file.display()
        );
    }
    status.how = format!("status export {}", v.id);
    let mut client = super::admin(args).await?;
    let site = client
        .import_site_status(status)
        .await
        .map_err(super::status)?
        .into_inner();
    Ok(format!(
        "site {}: {} cluster(s) and {} ledger entries as of {}\n",
        site.name,
        v.manifest.clusters,
        v.manifest.entries,
        super::output::ago(v.manifest.exported_unix_ms)
    ))
}

pub async fn execute(args: &Args, cmd: &BundleCommand) -> Result<String> {
    match cmd {
        BundleCommand::StatusExport { site, key, out } => status_export(args, site, key, out).await,
        BundleCommand::StatusImport { file, trust } => {
            status_import(args, file, &trusted(trust)?).await
        }
        BundleCommand::Keygen { out } => {
            if out.exists() {
                bail!("{} exists: not overwriting a key", out.display());
            }
            let (private, public) = SigningKey::generate();
            let pub_path = PathBuf::from(format!("{}.pub", out.display()));
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(out)
                    .with_context(|| format!("writing {}", out.display()))?;
                f.write_all(private.as_bytes())?;
            }
            std::fs::write(&pub_path, &public)
                .with_context(|| format!("writing {}", pub_path.display()))?;
            let key = SigningKey::read(out)?;
            Ok(format!(
                "wrote {} (keep it secret) and {} (give it to importers): {}\n",
                out.display(),
                pub_path.display(),
                key.fingerprint()
            ))
        }
        BundleCommand::Create {
            repo,
            refs,
            since,
            since_bundle,
            key,
            creator,
            plan,
            out,
        } => create(
            repo,
            refs,
            since.as_deref(),
            since_bundle.as_deref(),
            key,
            creator.clone(),
            plan.as_deref(),
            out,
        ),
        BundleCommand::Verify { file, trust } => {
            let v = bundle::verify(file, &trusted(trust)?)?;
            Ok(format!("verified: {}", describe(&v)))
        }
        BundleCommand::Import {
            file,
            into,
            trust,
            site,
            apply,
        } => {
            let keys = trusted(trust)?;
            let Imported {
                said: mut out,
                refs: after,
                plan,
            } = import(file, into, &keys)?;
            if let Some(site) = site {
                let held = commits(into)?;
                let how = format!(
                    "bundle import {}",
                    file.file_name().unwrap_or_default().to_string_lossy()
                );
                out.push_str(&report(args, site, after, held, how).await?);
            }
            match (plan, apply) {
                (Some(text), true) => {
                    let plan = super::rollout::parse_plan(&text, "the bundle's plan")?;
                    let mut client = super::admin(args).await?;
                    let r = client
                        .start_rollout(ferry_proto::v1::StartRolloutRequest {
                            plan: Some(plan),
                            dry_run: false,
                        })
                        .await
                        .map_err(super::status)?
                        .into_inner();
                    let _ = writeln!(
                        out,
                        "started rollout {} of {} from the bundle's plan",
                        r.id,
                        short(&r.commit)
                    );
                }
                (Some(_), false) => out.push_str(
                    "  the bundle carries a rollout plan: --apply starts it on this site's coordinator\n",
                ),
                (None, true) => out.push_str("  the bundle carries no plan: nothing to apply\n"),
                (None, false) => {}
            }
            Ok(out)
        }
    }
}
