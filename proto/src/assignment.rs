//! What a cluster should run, as agent and coordinator code use it, and its
//! wire form. The agent also keeps it in its cluster (serde, same field
//! names as the wire), so a restarted agent resumes without the coordinator.

use crate::domain::{Commit, Invalid};
use crate::v1;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A directory of a repository at a pinned commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub repo_url: String,
    pub commit: Commit,
    /// The cluster's directory in the repository ("" is its root).
    pub path: String,
    /// Increases with every change of the cluster's assignment.
    pub generation: u64,
    /// One sync may prune more than the agent's safety share.
    #[serde(default)]
    pub allow_mass_prune: bool,
    /// The rollout that moved this pin, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// The cluster's labels (per-cluster values of Helm sources).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The site whose mirror `repo_url` is: a missing commit there is the
    /// mirror lagging, not a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// An assignment the wire carried that an agent must not act on.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BadAssignment {
    /// The commit is not a full commit id.
    #[error("assignment generation {generation}: {source}")]
    Commit {
        generation: u64,
        #[source]
        source: Invalid,
    },
    /// The path leaves the repository.
    #[error("assignment generation {generation}: unsafe path {path:?}")]
    Path { generation: u64, path: String },
    /// The repository URL carries a password: credentials belong in the
    /// agent's Git Secret, not in what the coordinator hands out.
    #[error(
        "assignment generation {generation}: the repository URL {url} carries a password; credentials belong in the agent's Git Secret"
    )]
    PasswordInUrl { generation: u64, url: String },
}

/// Whether a repository-relative path stays inside the repository.
pub fn safe_path(path: &str) -> bool {
    !path.starts_with('/')
        && !path.contains('\\')
        && !path.contains('\0')
        && path.split('/').all(|seg| seg != ".." && seg != ".")
}

impl TryFrom<v1::Assignment> for Assignment {
    type Error = BadAssignment;

    fn try_from(a: v1::Assignment) -> Result<Self, Self::Error> {
        let shown = crate::redact(&a.repo_url);
        if shown != a.repo_url {
            return Err(BadAssignment::PasswordInUrl {
                generation: a.generation,
                url: shown,
            });
        }
        let commit = Commit::parse(&a.commit).map_err(|source| BadAssignment::Commit {
            generation: a.generation,
            source,
        })?;
        let path = a.path.trim_matches('/').to_string();
        if !safe_path(&path) {
            return Err(BadAssignment::Path {
                generation: a.generation,
                path: a.path,
            });
        }
        Ok(Assignment {
            repo_url: a.repo_url,
            commit,
            path,
            generation: a.generation,
            allow_mass_prune: a.options.is_some_and(|o| o.allow_mass_prune),
            rollout: (!a.rollout.is_empty()).then_some(a.rollout),
            labels: a.labels.into_iter().collect(),
            site: (!a.site.is_empty()).then_some(a.site),
        })
    }
}

impl From<&Assignment> for v1::Assignment {
    fn from(a: &Assignment) -> Self {
        v1::Assignment {
            repo_url: a.repo_url.clone(),
            commit: a.commit.to_string(),
            path: a.path.clone(),
            generation: a.generation,
            options: Some(v1::AssignmentOptions {
                allow_mass_prune: a.allow_mass_prune,
            }),
            rollout: a.rollout.clone().unwrap_or_default(),
            labels: a.labels.clone().into_iter().collect(),
            site: a.site.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(commit: &str, path: &str) -> v1::Assignment {
        v1::Assignment {
            repo_url: "git://h/r".into(),
            commit: commit.into(),
            path: path.into(),
            generation: 3,
            options: Some(v1::AssignmentOptions {
                allow_mass_prune: true,
            }),
            rollout: "r4".into(),
            labels: [("region".to_string(), "eu".to_string())].into(),
            site: "dmz".into(),
        }
    }

    #[test]
    fn round_trips_and_refuses_what_an_agent_must_not_act_on() {
        let c = "a".repeat(40);
        let a = Assignment::try_from(wire(&c, "/clusters/x/")).unwrap();
        assert_eq!(a.path, "clusters/x");
        assert!(a.allow_mass_prune);
        let back = v1::Assignment::from(&a);
        assert_eq!(Assignment::try_from(back).unwrap(), a);
        assert!(matches!(
            Assignment::try_from(wire("main", "x")),
            Err(BadAssignment::Commit { generation: 3, .. })
        ));
        assert!(matches!(
            Assignment::try_from(wire(&c, "clusters/../../etc")),
            Err(BadAssignment::Path { .. })
        ));
        let mut with_password = wire(&c, "x");
        with_password.repo_url = "https://bot:s3cret@git.example.com/fleet.git".into();
        let e = Assignment::try_from(with_password).unwrap_err();
        assert!(matches!(e, BadAssignment::PasswordInUrl { .. }));
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn the_kept_form_reads_what_older_agents_wrote() {
        // An agent of 0.1.0 kept this in its state ConfigMap.
        let old = format!(
            r#"{{"repo_url":"git://h/r","commit":"{}","path":"p","generation":2,"allow_mass_prune":false}}"#,
            "b".repeat(40)
        );
        let a: Assignment = serde_json::from_str(&old).unwrap();
        assert_eq!(a.generation, 2);
        assert_eq!(serde_json::to_string(&a).unwrap(), old);
    }
}
