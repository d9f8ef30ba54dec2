//! `ferry pin` and `ferry history`: moving pins and reading the ledger.

use super::output::{history_table, ledger_json, listing, short};
use super::{Admin, status};
use anyhow::Result;
use ferry_proto::v1::{HistoryRequest, LedgerEntry, PinRequest};
use serde_json::json;
use std::fmt::Write as _;

/// What `ferry pin` asks for.
#[derive(clap::Args, Debug)]
pub struct PinArgs {
    /// Clusters to pin.
    #[arg(required = true)]
    pub clusters: Vec<String>,
    /// Branch, tag, full or short commit.
    #[arg(long = "commit")]
    pub reference: String,
    /// Why, for the ledger.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Pin even clusters inside an active rollout (recorded in the ledger).
    #[arg(long)]
    pub force: bool,
    /// Let this pin prune more than the agent's safety share (for removing
    /// most of a cluster's objects on purpose).
    #[arg(long)]
    pub allow_mass_prune: bool,
}

pub async fn pin(client: &mut Admin, a: PinArgs, json: bool) -> Result<String> {
    let mut out = String::new();
    let r = client
        .pin(PinRequest {
            clusters: a.clusters.clone(),
            r#ref: a.reference.clone(),
            reason: a.reason,
            force: a.force,
            allow_mass_prune: a.allow_mass_prune,
        })
        .await
        .map_err(status)?
        .into_inner();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(
                &json!({"commit": r.commit, "changes": r.entries.iter().map(ledger_json).collect::<Vec<_>>()})
            )?
        )?;
        return Ok(out);
    }
    writeln!(out, "{} is {}", a.reference, r.commit)?;
    let changed: std::collections::HashMap<&str, &LedgerEntry> =
        r.entries.iter().map(|e| (e.cluster.as_str(), e)).collect();
    for c in &a.clusters {
        match changed.get(c.as_str()) {
            Some(e) => writeln!(
                out,
                "  {c}: {} -> {}",
                short(&e.from_commit),
                short(&e.to_commit)
            )?,
            None => writeln!(out, "  {c}: already pinned there")?,
        }
    }
    Ok(out)
}

pub async fn history(
    client: &mut Admin,
    cluster: Option<String>,
    limit: u32,
    json: bool,
) -> Result<String> {
    let entries = client
        .history(HistoryRequest {
            cluster: cluster.unwrap_or_default(),
            limit,
        })
        .await
        .map_err(status)?
        .into_inner()
        .entries;
    listing(json, &entries, ledger_json, history_table)
}
