//! `ferry clusters` and `ferry cluster show|set-path|add|revoke`.

use super::output::{cluster_details, cluster_json, clusters_table, listing};
use super::{Admin, status};
use anyhow::Result;
use clap::Subcommand;
use ferry_proto::v1::{
    AddClusterRequest, GetClusterRequest, RevokeClusterRequest, SetClusterPathRequest,
};
use serde_json::json;
use std::fmt::Write as _;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show one cluster in full, with its problems.
    Show { name: String },
    /// Override the cluster's directory in the repository ("" clears it).
    SetPath { name: String, path: String },
    /// Create a cluster and a one-time join token for its agent (admin).
    /// Run it again for a cluster whose agent lost its identity (a rebuilt
    /// cluster): it gets a fresh token.
    Add {
        name: String,
        /// key=value (repeat).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// How long the join token lasts (30m, 1h, 1d).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Close the cluster's stream and refuse its certificates (admin).
    Revoke { name: String },
}

/// `ferry clusters`, every page of it.
pub async fn list(client: &mut Admin, page_size: u32, json: bool) -> Result<String> {
    let mut list = super::dial::all_clusters(client, page_size).await?;
    // Clusters of disconnected sites, as their coordinator last exported
    // them: named SITE/CLUSTER, never connected here, with their age.
    let sites = client
        .list_sites(ferry_proto::v1::ListSitesRequest { lag: false })
        .await
        .map_err(status)?
        .into_inner()
        .sites;
    for site in sites {
        let Some(st) = site.status else { continue };
        let age = super::output::ago(st.exported_unix_ms);
        for mut c in st.clusters {
            c.name = format!("{}/{}", site.name, c.name);
            c.connected = false;
            if let Some(s) = &mut c.status {
                s.message = format!("as of {age} (site {}): {}", site.name, s.message);
            }
            list.push(c);
        }
    }
    listing(json, &list, cluster_json, clusters_table)
}

pub async fn execute(client: &mut Admin, cmd: ClusterCommand, json: bool) -> Result<String> {
    let mut out = String::new();
    match cmd {
        ClusterCommand::Show { name } => {
            let c = client
                .get_cluster(GetClusterRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&cluster_json(&c))?)?;
            } else {
                write!(out, "{}", cluster_details(&c))?;
            }
        }
        ClusterCommand::SetPath { name, path } => {
            let c = client
                .set_cluster_path(SetClusterPathRequest { name, path })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&cluster_json(&c))?)?;
            } else {
                writeln!(out, "cluster {} now reads {}", c.name, c.path)?;
            }
        }
        ClusterCommand::Add { name, labels, ttl } => {
            let labels = labels
                .iter()
                .map(|l| ferry_proto::parse_label(l).map_err(|e| anyhow::anyhow!(e)))
                .collect::<Result<_>>()?;
            let ttl = super::rollout::seconds(&ttl)?;
            let r = client
                .add_cluster(AddClusterRequest {
                    name: name.clone(),
                    labels,
                    token_ttl_seconds: ttl,
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"cluster": r.cluster.as_ref().map(cluster_json), "joinToken": r.join_token, "expiresUnixMs": r.expires_unix_ms})
                    )?
                )?;
            } else {
                writeln!(
                    out,
                    "cluster {name} added; its one-time join token (valid {}s):\n{}\n",
                    ttl, r.join_token
                )?;
                writeln!(
                    out,
                    "start its agent with: ferry-agent --cluster {name} --join-token <token> --ca <coordinator ca.pem> ..."
                )?;
            }
        }
        ClusterCommand::Revoke { name } => {
            let c = client
                .revoke_cluster(RevokeClusterRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            writeln!(
                out,
                "cluster {} revoked: its session is closed and its certificates are refused",
                c.name
            )?;
        }
    }
    Ok(out)
}
