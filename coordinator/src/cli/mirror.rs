//! `ferry mirror sync`: keeps a site's bare Git mirror in step with the
//! upstream repository, fast-forward only, and tells the coordinator what
//! the mirror holds. Runs where the mirror is (beside the site's `git
//! daemon` or `git http-backend`), with the `git` command line: a fetch is
//! the one Git operation that is atomic across refs (`--atomic`), and the
//! mirror is served by git itself anyway.

use super::output::{clean, short};
use super::{Args, status};
use anyhow::{Context, Result, bail};
use ferry_proto::v1::ReportMirrorRequest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The most commits one report names (the coordinator's bound too).
const MAX_COMMITS: usize = 100_000;

#[derive(clap::Subcommand, Debug)]
pub enum MirrorCommand {
    /// Bring a bare mirror repository in step with the upstream: every
    /// branch and tag, fast-forward only (a rewritten upstream ref is
    /// refused by name and nothing moves, unless --allow-rewrite), all refs
    /// updated at once; then report what the mirror holds.
    Sync(SyncArgs),
}

#[derive(clap::Args, Debug)]
pub struct SyncArgs {
    /// The upstream repository (any URL git fetches from).
    #[arg(long)]
    pub from: String,
    /// The mirror: a bare repository, created if missing.
    #[arg(long)]
    pub to: PathBuf,
    /// Report to the coordinator which refs and commits the mirror holds,
    /// as this site's (a token with the `mirror` role is enough).
    #[arg(long)]
    pub site: Option<String>,
    /// Keep syncing at this interval (30s, 1m) until stopped.
    #[arg(long)]
    pub interval: Option<String>,
    /// Follow upstream refs that moved backwards or sideways.
    #[arg(long)]
    pub allow_rewrite: bool,
}

/// Runs `git` with `args`; its output, or an error with what it said.
pub fn git(dir: Option<&Path>, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    let out = cmd
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "git not found: mirrors are fed with the git command line; install git"
                )
            } else {
                anyhow::anyhow!("running git: {e}")
            }
        })?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A ref as a repository holds it.
pub struct Ref {
    /// What the ref names (an annotated tag's own object).
    pub object: String,
    /// The commit it leads to (a tag peeled).
    pub commit: String,
}

/// The branches and tags of a repository, by name.
pub fn ref_objects(repo: &Path) -> Result<BTreeMap<String, Ref>> {
    let out = git(
        Some(repo),
        &[
            "for-each-ref",
            "--format=%(refname) %(objectname) %(*objectname)",
            "refs/heads",
            "refs/tags",
        ],
    )?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (name, object, peeled) = (f.next()?, f.next()?, f.next().unwrap_or(""));
            let commit = if peeled.is_empty() { object } else { peeled };
            Some((
                name.to_string(),
                Ref {
                    object: object.to_string(),
                    commit: commit.to_string(),
                },
            ))
        })
        .collect())
}

/// The branches and tags of a repository: name -> commit (tags peeled).
pub fn refs(repo: &Path) -> Result<BTreeMap<String, String>> {
    Ok(ref_objects(repo)?
        .into_iter()
        .map(|(n, r)| (n, r.commit))
        .collect())
}

/// Every commit the repository holds, newest first (bounded).
pub fn commits(repo: &Path) -> Result<Vec<String>> {
    let out = git(
        Some(repo),
        &[
            "rev-list",
            "--branches",
            "--tags",
            &format!("--max-count={MAX_COMMITS}"),
        ],
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

/// A bare repository at `dir`, made if missing.
pub fn bare(dir: &Path) -> Result<()> {
    if !dir.exists() {
        let d = dir.display().to_string();
        git(None, &["init", "--bare", "--quiet", &d])
            .with_context(|| format!("creating the mirror {d}"))?;
        return Ok(());
    }
    let bare = git(Some(dir), &["rev-parse", "--is-bare-repository"])
        .with_context(|| format!("{} is not a Git repository", dir.display()))?;
    if bare.trim() != "true" {
        bail!("{} is not a bare repository", dir.display());
    }
    Ok(())
}

/// What moved: (ref, before, after).
pub fn moved(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<(String, String, String)> {
    after
        .iter()
        .filter(|(r, c)| before.get(*r) != Some(c))
        .map(|(r, c)| {
            (
                r.clone(),
                before.get(r).cloned().unwrap_or_default(),
                c.clone(),
            )
        })
        .collect()
}

/// One sync; what it did, for people.
fn sync_once(a: &SyncArgs) -> Result<(String, BTreeMap<String, String>, Vec<String>)> {
    bare(&a.to)?;
    let before = refs(&a.to)?;
    let plus = if a.allow_rewrite { "+" } else { "" };
    let heads = format!("{plus}refs/heads/*:refs/heads/*");
    let tags = format!("{plus}refs/tags/*:refs/tags/*");
    let shown = ferry_proto::redact(&a.from);
    if let Err(e) = git(
        Some(&a.to),
        &[
            "fetch",
            "--atomic",
            "--no-tags",
            "--",
            &a.from,
            &heads,
            &tags,
        ],
    ) {
        let said = e.to_string();
        let rejected: Vec<&str> = said
            .lines()
            .filter(|l| l.contains("[rejected]") || l.contains("would clobber"))
            .collect();
        if !rejected.is_empty() {
            bail!(
                "upstream {shown} moved ref(s) backwards or sideways (not a fast-forward): refused, the mirror {} is unchanged (--allow-rewrite follows them):\n{}",
                a.to.display(),
                rejected.join("\n")
            );
        }
        bail!("fetching {shown} into {}: {}", a.to.display(), clean(&said));
    }
    let after = refs(&a.to)?;
    let held = commits(&a.to)?;
    let mut out = format!(
        "mirror {} in step with {shown}: {} ref(s), {} commit(s)\n",
        a.to.display(),
        after.len(),
        held.len()
    );
    for (r, from, to) in moved(&before, &after) {
        out.push_str(&format!("  {r}  {} -> {}\n", short(&from), short(&to)));
    }
    Ok((out, after, held))
}

/// Tells the coordinator what a site's mirror holds.
pub async fn report(
    args: &Args,
    site: &str,
    refs: BTreeMap<String, String>,
    commits: Vec<String>,
    how: String,
) -> Result<String> {
    let mut client = super::admin(args).await?;
    let s = client
        .report_mirror(ReportMirrorRequest {
            site: site.to_string(),
            refs: refs.into_iter().collect(),
            commits,
            how,
        })
        .await
        .map_err(status)?
        .into_inner();
    Ok(format!(
        "reported to the coordinator: site {} holds {} commit(s), {} cluster(s) read from it\n",
        s.name,
        s.commits,
        s.clusters.len()
    ))
}

pub async fn execute(args: &Args, cmd: &MirrorCommand) -> Result<String> {
    let MirrorCommand::Sync(a) = cmd;
    let once = || async {
        let (mut out, refs, held) = sync_once(a)?;
        if let Some(site) = &a.site {
            let how = format!("mirror sync from {}", ferry_proto::redact(&a.from));
            out.push_str(&report(args, site, refs, held, how).await?);
        }
        Ok::<_, anyhow::Error>(out)
    };
    let Some(every) = &a.interval else {
        return once().await;
    };
    let every = std::time::Duration::from_secs(super::rollout::seconds(every)?.max(1) as u64);
    loop {
        match once().await {
            Ok(out) => print!("{out}"),
            Err(e) => eprintln!("ferry mirror sync: {e:#}"),
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(String::new()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}
