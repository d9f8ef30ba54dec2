//! `ferry sites` and `ferry site add|remove|show`: clusters a site's
//! selector picks fetch from the site's Git mirror.

use super::output::{ago, clean, listing, short, table};
use super::{Admin, status};
use anyhow::Result;
use clap::Subcommand;
use ferry_proto::v1::{AddSiteRequest, ListSitesRequest, RemoveSiteRequest, Site};
use serde_json::{Value, json};
use std::fmt::Write as _;

#[derive(Subcommand, Debug)]
pub enum SiteCommand {
    /// Create a site (admin): the clusters its selector picks are assigned
    /// the mirror's URL instead of the repository's. Their Git credentials
    /// stay their own Secret's.
    Add {
        name: String,
        /// The site's Git mirror, as its clusters reach it.
        #[arg(long)]
        mirror: String,
        /// The clusters it holds (site=dmz, region in (ship-1,ship-2)).
        #[arg(long)]
        selector: String,
    },
    /// Remove a site (admin): its clusters read the repository again.
    Remove { name: String },
    /// One site: its mirror, clusters, refs, and when it was last reported.
    Show { name: String },
}

fn site_json(s: &Site) -> Value {
    json!({
        "name": s.name,
        "mirrorUrl": s.mirror_url,
        "selector": s.selector,
        "clusters": s.clusters,
        "refs": s.refs,
        "commits": s.commits,
        "reportedUnixMs": s.reported_unix_ms,
        "reportedBy": s.reported_by,
        "upstream": s.upstream,
        "statusExportedUnixMs": s.status.as_ref().map(|st| st.exported_unix_ms),
        "statusClusters": s.status.as_ref().map(|st| st.clusters.len()),
    })
}

/// The ref people care about first: main, master, then any branch.
fn first_ref(s: &Site) -> Option<(&String, &String)> {
    ["refs/heads/main", "refs/heads/master"]
        .iter()
        .find_map(|r| s.refs.get_key_value(*r))
        .or_else(|| s.refs.iter().find(|(k, _)| k.starts_with("refs/heads/")))
        .or_else(|| s.refs.iter().next())
}

fn headline(s: &Site) -> String {
    match first_ref(s) {
        Some((r, c)) => format!(
            "{}@{}",
            r.trim_start_matches("refs/heads/")
                .trim_start_matches("refs/"),
            short(c)
        ),
        None => "-".into(),
    }
}

fn sites_table(list: &[Site]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.mirror_url.clone(),
                s.selector.clone(),
                s.clusters.len().to_string(),
                headline(s),
                first_ref(s)
                    .and_then(|(r, _)| s.upstream.get(r))
                    .cloned()
                    .unwrap_or_else(|| "-".into()),
                s.commits.to_string(),
                ago(s.reported_unix_ms),
            ]
        })
        .collect();
    table(
        &[
            "SITE", "MIRROR", "SELECTOR", "CLUSTERS", "AT", "LAG", "COMMITS", "REPORTED",
        ],
        &rows,
    )
}

fn details(s: &Site) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Site:      {}", clean(&s.name));
    let _ = writeln!(out, "Mirror:    {}", clean(&s.mirror_url));
    let _ = writeln!(out, "Selector:  {}", clean(&s.selector));
    let _ = writeln!(
        out,
        "Clusters:  {}",
        if s.clusters.is_empty() {
            "-".to_string()
        } else {
            s.clusters.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "Reported:  {}{}",
        ago(s.reported_unix_ms),
        if s.reported_by.is_empty() {
            String::new()
        } else {
            format!(" ({})", clean(&s.reported_by))
        }
    );
    let _ = writeln!(out, "Commits:   {}", s.commits);
    if let Some(st) = &s.status {
        let _ = writeln!(
            out,
            "Status:    {} cluster(s) as of {} ({}), imported {}",
            st.clusters.len(),
            ago(st.exported_unix_ms),
            clean(&st.how),
            ago(s.status_imported_unix_ms)
        );
        for e in st.history.iter().take(5) {
            let _ = writeln!(
                out,
                "  {}  {}  {} -> {}  {}",
                ago(e.at_unix_ms),
                clean(&e.cluster),
                short(&e.from_commit),
                short(&e.to_commit),
                clean(&e.reason)
            );
        }
    }
    if !s.refs.is_empty() {
        let _ = writeln!(out, "Refs:");
        let mut refs: Vec<_> = s.refs.iter().collect();
        refs.sort();
        for (r, c) in refs {
            match s.upstream.get(r) {
                Some(lag) => {
                    let _ = writeln!(out, "  {}  {}  ({})", short(c), clean(r), clean(lag));
                }
                None => {
                    let _ = writeln!(out, "  {}  {}", short(c), clean(r));
                }
            }
        }
    }
    out
}

pub async fn list(client: &mut Admin, json: bool) -> Result<String> {
    let sites = client
        .list_sites(ListSitesRequest { lag: true })
        .await
        .map_err(status)?
        .into_inner()
        .sites;
    if sites.is_empty() && !json {
        return Ok("no sites (`ferry site add NAME --mirror URL --selector SEL`)\n".into());
    }
    listing(json, &sites, site_json, sites_table)
}

pub async fn execute(client: &mut Admin, cmd: SiteCommand, json: bool) -> Result<String> {
    let (site, said) = match cmd {
        SiteCommand::Add {
            name,
            mirror,
            selector,
        } => {
            let s = client
                .add_site(AddSiteRequest {
                    name,
                    mirror_url: mirror,
                    selector,
                })
                .await
                .map_err(status)?
                .into_inner();
            let said = format!(
                "site {} added: {} cluster(s) now fetch from {}\n",
                s.name,
                s.clusters.len(),
                s.mirror_url
            );
            (s, said)
        }
        SiteCommand::Remove { name } => {
            let s = client
                .remove_site(RemoveSiteRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            let said = format!(
                "site {} removed: {} cluster(s) fetch from the repository again\n",
                s.name,
                s.clusters.len()
            );
            (s, said)
        }
        SiteCommand::Show { name } => {
            let s = client
                .list_sites(ListSitesRequest { lag: true })
                .await
                .map_err(status)?
                .into_inner()
                .sites
                .into_iter()
                .find(|s| s.name == name)
                .ok_or_else(|| anyhow::anyhow!("unknown site {name:?} (see `ferry sites`)"))?;
            let said = details(&s);
            (s, said)
        }
    };
    Ok(if json {
        serde_json::to_string_pretty(&site_json(&site))? + "\n"
    } else {
        said
    })
}
