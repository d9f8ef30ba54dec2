//! Reading a cluster's directory at a commit: the fetch (bounded by a
//! timeout, so a hung Git server cannot hang the agent), kustomization
//! builds, rendering to objects, and the signature check. Shared by the
//! sync loop and previews, each with its own Git cache.

use crate::helm;
use crate::render::{self, Object, Problem};
use crate::source::{self, Source};
use ferry_proto::verify::{Mode, Policy, Signer};
use ferry_proto::{Assignment, Commit};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The longest a Git fetch may take before the read fails and is retried.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a directory could not be read.
#[derive(Debug)]
pub enum Unread {
    /// Told to stop.
    Stopped,
    /// Git could not give the commit (down, refused, missing, too slow).
    Git(String),
    /// The site's mirror does not hold the commit yet: the mirror lags,
    /// which is not a failure of this cluster.
    Lagging(String),
    /// What the directory holds is not valid: nothing may be applied.
    Invalid {
        message: String,
        problems: Vec<Problem>,
    },
}

/// What a read gave.
pub struct Read {
    pub objects: Vec<Object>,
    /// Set when the commit had to be fetched: how long that took.
    pub fetched: Option<Duration>,
}

/// Reads directories of a repository into objects.
#[derive(Clone)]
pub struct Reader {
    pub source: Source,
    /// The command that builds a kustomization, given its directory last.
    pub kustomize: Vec<String>,
    /// A `helm template`-compatible command, for Helm sources.
    pub helm: Vec<String>,
    /// This cluster's name (per-cluster values of Helm sources).
    pub cluster: String,
}

impl Reader {
    /// The objects of the assignment's directory at its commit.
    pub async fn read(&self, a: &Assignment, stop: &CancellationToken) -> Result<Read, Unread> {
        let (url, commit, path) = (a.repo_url.as_str(), &a.commit, a.path.as_str());
        let source = self.source.clone();
        let (u, p, c) = (url.to_string(), path.to_string(), commit.clone());
        let started = Instant::now();
        let read = tokio::task::spawn_blocking(move || source.files(&u, &c, &p, &render::wanted));
        let files = tokio::select! {
            _ = stop.cancelled() => return Err(Unread::Stopped),
            r = tokio::time::timeout(GIT_TIMEOUT, read) => r,
        };
        let (files, fetched) = match files {
            Err(_) => {
                return Err(Unread::Git(format!(
                    "fetching {} from {} took over {} s: gave up, will retry",
                    commit.short(),
                    source::redact(url),
                    GIT_TIMEOUT.as_secs()
                )));
            }
            Ok(Ok(Ok((files, fetched)))) => (files, fetched.then(|| started.elapsed())),
            Ok(Ok(Err(e @ source::Error::UnknownCommit { .. }))) if a.site.is_some() => {
                return Err(Unread::Lagging(format!(
                    "waiting for mirror {} to hold {} ({e})",
                    a.site.as_deref().unwrap_or_default(),
                    commit.short()
                )));
            }
            Ok(Ok(Err(e))) => return Err(Unread::Git(e.to_string())),
            Ok(Err(e)) => {
                return Err(Unread::Invalid {
                    message: format!("reading Git: {e}"),
                    problems: vec![],
                });
            }
        };
        if helm::is_chart(&files) {
            return match self.helm(a, files).await {
                Ok(objects) => Ok(Read { objects, fetched }),
                Err(problems) => Err(Unread::Invalid {
                    message: format!(
                        "the Helm source {} at {} does not render ({}): nothing was applied",
                        path,
                        commit.short(),
                        problems.first().map(|p| p.to_string()).unwrap_or_default()
                    ),
                    problems,
                }),
            };
        }
        let files = if render::is_kustomization(&files) {
            match self.kustomize(url, commit, path).await {
                Ok(f) => vec![f],
                Err(p) => {
                    return Err(Unread::Invalid {
                        message: format!("{} at {}: nothing was applied", p, commit.short()),
                        problems: vec![p],
                    });
                }
            }
        } else {
            files
        };
        match render::render(&files) {
            Ok(objects) => Ok(Read { objects, fetched }),
            Err(problems) => Err(Unread::Invalid {
                message: format!(
                    "{} invalid document(s) at {} in {}: nothing was applied",
                    problems.len(),
                    commit.short(),
                    path
                ),
                problems,
            }),
        }
    }

    /// Renders a Helm source from an export of the tree.
    async fn helm(
        &self,
        a: &Assignment,
        files: Vec<source::File>,
    ) -> Result<Vec<Object>, Vec<Problem>> {
        let source = self.source.clone();
        let command = self.helm.clone();
        let cluster = self.cluster.clone();
        let a = a.clone();
        let label = format!("helm template {}", a.path);
        let one = move |message: String| {
            vec![Problem {
                source: label.clone(),
                object: String::new(),
                message,
            }]
        };
        let rendered = tokio::task::spawn_blocking(move || {
            let tree = tempfile::tempdir().map_err(|e| one(e.to_string()))?;
            source
                .export(&a.repo_url, &a.commit, &a.path, tree.path())
                .map_err(|e| one(e.to_string()))?;
            let who = helm::For {
                cluster: &cluster,
                labels: &a.labels,
            };
            let release = helm::release(&files, &a.path, tree.path(), &who).map_err(|p| vec![p])?;
            helm::render(&command, tree.path(), &release)
        })
        .await;
        rendered.unwrap_or_else(|e| {
            Err(vec![Problem {
                source: "helm template".into(),
                object: String::new(),
                message: e.to_string(),
            }])
        })
    }

    /// Builds a kustomization from an export of the tree.
    async fn kustomize(
        &self,
        url: &str,
        commit: &Commit,
        path: &str,
    ) -> Result<source::File, Problem> {
        let source = self.source.clone();
        let command = self.kustomize.clone();
        let (u, p, c) = (url.to_string(), path.to_string(), commit.clone());
        let problem = |message: String| Problem {
            source: format!("kustomize build {path}"),
            object: String::new(),
            message,
        };
        let built = tokio::task::spawn_blocking(move || {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            source
                .export(&u, &c, &p, dir.path())
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(render::kustomize(&command, &dir.path().join(&p), &p))
        })
        .await;
        match built {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(problem(e)),
            Err(e) => Err(problem(e.to_string())),
        }
    }

    /// Checks a (cached) commit against the keys in `dir`, read now. `Err`
    /// says why it must not be applied.
    pub async fn verify(
        &self,
        dir: PathBuf,
        mode: Mode,
        url: &str,
        commit: &Commit,
    ) -> Result<(Signer, String), String> {
        let source = self.source.clone();
        let (u, c) = (url.to_string(), commit.clone());
        tokio::task::spawn_blocking(move || {
            let policy = Policy::load(&dir, mode).map_err(|e| e.to_string())?;
            let data = source.commit_object(&u, &c).map_err(|e| e.to_string())?;
            let tags = match policy.mode {
                Mode::Tag => source
                    .tags_naming(&u, &c, true)
                    .map_err(|e| format!("checking the tags of {}: {e}", c.short()))?,
                Mode::Commit => vec![],
            };
            let signer = policy.verify(&c, &data, &tags).map_err(|e| e.to_string())?;
            Ok((signer, policy.digest))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The digest of the keys in `dir` as they are now.
    pub async fn keys_digest(dir: PathBuf, mode: Mode) -> Result<String, String> {
        tokio::task::spawn_blocking(move || Policy::load(&dir, mode).map(|p| p.digest))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}
