//! `ferry diff`: what a commit would change in each cluster, as its agent
//! computes it (a server-side dry-run in the cluster); nothing is applied.

use super::output::{clean, short};
use super::rollout::seconds;
use super::{Admin, status};
use anyhow::Result;
use ferry_proto::v1::{ChangeAction, ClusterDiff, DiffRequest, DiffResponse, Preview};
use serde_json::{Value, json};
use std::fmt::Write as _;

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// Clusters to preview.
    pub clusters: Vec<String>,
    /// Or every cluster this label selector picks (ring=canary,region in (eu,us)).
    #[arg(long)]
    pub selector: Option<String>,
    /// Branch, tag, full or short commit.
    #[arg(long = "commit")]
    pub reference: String,
    /// One line per cluster: what would be created, changed, pruned.
    #[arg(long)]
    pub summary: bool,
    /// How long to wait for the agents (30s, 2m); offline and late
    /// clusters are listed as not previewed.
    #[arg(long, default_value = "30s")]
    pub timeout: String,
}

/// Asks the coordinator for a preview of `reference` in `clusters` (or the
/// `selector`'s).
pub async fn ask(
    client: &mut Admin,
    clusters: Vec<String>,
    selector: String,
    reference: String,
    summary: bool,
    timeout_seconds: u32,
) -> Result<DiffResponse> {
    Ok(client
        .diff(DiffRequest {
            clusters,
            selector,
            r#ref: reference,
            timeout_seconds,
            summary,
        })
        .await
        .map_err(status)?
        .into_inner())
}

pub async fn run(client: &mut Admin, a: DiffArgs, json: bool) -> Result<String> {
    let timeout = seconds(&a.timeout)?.clamp(1, 300) as u32;
    let d = ask(
        client,
        a.clusters,
        a.selector.unwrap_or_default(),
        a.reference,
        a.summary,
        timeout,
    )
    .await?;
    if json {
        return Ok(serde_json::to_string_pretty(&diff_json(&d))? + "\n");
    }
    let mut out = format!(
        "Preview of {} in {} cluster(s); nothing is applied.\n",
        short(&d.commit),
        d.clusters.len()
    );
    for c in &d.clusters {
        out.push('\n');
        out.push_str(&cluster_text(c, a.summary));
    }
    Ok(out)
}

/// Counts of a preview: (create, change, prune).
pub fn counts(p: &Preview) -> (usize, usize, usize) {
    let n = |a: ChangeAction| p.changes.iter().filter(|c| c.action == a as i32).count();
    (
        n(ChangeAction::Create),
        n(ChangeAction::Update),
        n(ChangeAction::Prune),
    )
}

/// One line saying what a cluster's preview found (or why there is none).
pub fn summary_line(c: &ClusterDiff) -> String {
    let p = c.preview.clone().unwrap_or_default();
    if !c.previewed {
        let why = clean(&p.error);
        return if why.starts_with("not previewed") {
            format!("{}: {why}", c.cluster)
        } else {
            format!("{}: not previewed: {why}", c.cluster)
        };
    }
    let (create, change, prune) = counts(&p);
    let mut s = format!(
        "{}: {create} to create, {change} to change, {prune} to prune, {} unchanged",
        c.cluster, p.unchanged
    );
    if !p.rejected.is_empty() {
        let _ = write!(s, ", {} rejected", p.rejected.len());
    }
    if !p.prune_refused.is_empty() {
        s.push_str(", prunes refused");
    }
    if p.truncated {
        s.push_str(" (cut short)");
    }
    s
}

fn cluster_text(c: &ClusterDiff, summary: bool) -> String {
    let mut out = summary_line(c);
    out.push('\n');
    let Some(p) = c.preview.as_ref() else {
        return out;
    };
    if !c.previewed {
        for r in &p.rejected {
            let _ = writeln!(
                out,
                "  x {} ({}): {}",
                clean(&r.object),
                clean(&r.source),
                clean(&r.message)
            );
        }
        return out;
    }
    if !p.signer.is_empty() {
        let _ = writeln!(out, "  signed by {}", clean(&p.signer));
    }
    if summary {
        return out;
    }
    for ch in &p.changes {
        let mark = match ChangeAction::try_from(ch.action).unwrap_or_default() {
            ChangeAction::Create => '+',
            ChangeAction::Update => '~',
            ChangeAction::Prune => '-',
            ChangeAction::Unspecified => '?',
        };
        let _ = writeln!(out, "  {mark} {}", clean(&ch.object));
        for f in &ch.fields {
            let _ = writeln!(
                out,
                "      {}: {} -> {}",
                clean(&f.path),
                clean(&f.before),
                clean(&f.after)
            );
        }
    }
    if !p.prune_refused.is_empty() {
        let _ = writeln!(out, "  ! {}", clean(&p.prune_refused));
    }
    for r in &p.rejected {
        let _ = writeln!(
            out,
            "  x {}: the server would reject it: {}",
            clean(&r.object),
            clean(&r.message)
        );
    }
    out
}

pub fn diff_json(d: &DiffResponse) -> Value {
    json!({
        "commit": d.commit,
        "clusters": d.clusters.iter().map(|c| {
            let p = c.preview.clone().unwrap_or_default();
            json!({
                "cluster": c.cluster,
                "previewed": c.previewed,
                "error": p.error,
                "signer": p.signer,
                "unchanged": p.unchanged,
                "truncated": p.truncated,
                "pruneRefused": p.prune_refused,
                "changes": p.changes.iter().map(|ch| json!({
                    "object": ch.object,
                    "action": match ChangeAction::try_from(ch.action).unwrap_or_default() {
                        ChangeAction::Create => "create",
                        ChangeAction::Update => "update",
                        ChangeAction::Prune => "prune",
                        ChangeAction::Unspecified => "unknown",
                    },
                    "fields": ch.fields.iter().map(|f| json!({"path": f.path, "before": f.before, "after": f.after})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "rejected": p.rejected.iter().map(|r| json!({"object": r.object, "source": r.source, "message": r.message})).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
    })
}
