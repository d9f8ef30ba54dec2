//! Git: a bare cache repository per source URL, fetched only when the pinned
//! commit is not already there (a pin is a commit, so a cached commit costs
//! no network), and the cluster's directory read straight from the object
//! database (no worktree). Blocking (gix): run it in `spawn_blocking`.

use ferry_proto::Commit;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local cache could not be created or opened.
    #[error("git cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
    /// Fetching from the remote failed (network, authentication, protocol).
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
    /// The remote does not have the pinned commit.
    #[error("commit {commit} is not in {url}")]
    UnknownCommit { url: String, commit: String },
    /// The pinned commit has no such directory.
    #[error("path {path:?} does not exist at commit {commit}")]
    PathMissing { path: String, commit: String },
    /// Reading objects from the cache failed.
    #[error("reading {what} at commit {commit}: {message}")]
    Read {
        what: String,
        commit: String,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A file of the cluster's directory: its path below that directory and bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
}

/// Git repositories cached under one directory.
#[derive(Clone, Debug)]
pub struct Source {
    dir: PathBuf,
}

fn cache_name(url: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, url.as_bytes());
    let hex: String = digest.as_ref()[..10]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hex}.git")
}

impl Source {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Source { dir: dir.into() }
    }

    fn open(&self, url: &str) -> Result<gix::Repository> {
        let path = self.dir.join(cache_name(url));
        let err = |e: &dyn std::fmt::Display| Error::Cache {
            path: path.clone(),
            message: e.to_string(),
        };
        if path.join("HEAD").exists() {
            gix::open(&path).map_err(|e| err(&e))
        } else {
            std::fs::create_dir_all(&path).map_err(|e| err(&e))?;
            gix::init_bare(&path).map_err(|e| err(&e))
        }
    }

    fn fetch(repo: &gix::Repository, url: &str) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| Error::Fetch {
            url: url.to_string(),
            message: e.to_string(),
        };
        repo.remote_at(url)
            .map_err(|e| err(&e))?
            .with_refspecs(
                ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                gix::remote::Direction::Fetch,
            )
            .map_err(|e| err(&e))?
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| err(&e))?
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| err(&e))?
            .receive(gix::progress::Discard, &AtomicBool::new(false))
            .map_err(|e| err(&e))?;
        Ok(())
    }

    /// Makes sure `commit` is in the cache; returns whether it had to fetch.
    pub fn ensure(&self, url: &str, commit: &Commit) -> Result<(gix::Repository, bool)> {
        let repo = self.open(url)?;
        let id = gix::ObjectId::from_hex(commit.as_str().as_bytes()).map_err(|e| Error::Read {
            what: "the commit id".into(),
            commit: commit.to_string(),
            message: e.to_string(),
        })?;
        if repo.has_object(id) {
            return Ok((repo, false));
        }
        Self::fetch(&repo, url)?;
        if !repo.has_object(id) {
            return Err(Error::UnknownCommit {
                url: url.to_string(),
                commit: commit.to_string(),
            });
        }
        Ok((repo, true))
    }

    /// Every file below `path` at `commit`, fetching only if the commit is
    /// not cached yet. Also says whether it fetched.
    pub fn files(&self, url: &str, commit: &Commit, path: &str) -> Result<(Vec<File>, bool)> {
        let (repo, fetched) = self.ensure(url, commit)?;
        let read = |what: &str, e: &dyn std::fmt::Display| Error::Read {
            what: what.to_string(),
            commit: commit.to_string(),
            message: e.to_string(),
        };
        let id = gix::ObjectId::from_hex(commit.as_str().as_bytes())
            .map_err(|e| read("the commit id", &e))?;
        let root = repo
            .find_commit(id)
            .map_err(|e| read("the commit", &e))?
            .tree()
            .map_err(|e| read("the root tree", &e))?;
        let path = path.trim_matches('/');
        let missing = || Error::PathMissing {
            path: path.to_string(),
            commit: commit.to_string(),
        };
        let tree = if path.is_empty() {
            root
        } else {
            let entry = root
                .lookup_entry_by_path(Path::new(path))
                .map_err(|e| read(path, &e))?
                .ok_or_else(missing)?;
            if !entry.mode().is_tree() {
                return Err(missing());
            }
            entry.object().map_err(|e| read(path, &e))?.into_tree()
        };
        let mut files = vec![];
        walk(&repo, tree, "", &mut files).map_err(|(what, m)| read(&what, &m))?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((files, fetched))
    }
}

impl Source {
    /// Writes the whole tree at `commit` below `dest` (for kustomize, whose
    /// overlays reach outside the cluster's directory).
    pub fn export(&self, url: &str, commit: &Commit, dest: &Path) -> Result<()> {
        let (files, _) = self.files(url, commit, "")?;
        for f in files {
            let p = dest.join(&f.path);
            let io = |e: std::io::Error| Error::Read {
                what: f.path.clone(),
                commit: commit.to_string(),
                message: e.to_string(),
            };
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            std::fs::write(&p, &f.data).map_err(io)?;
        }
        Ok(())
    }
}

fn walk(
    repo: &gix::Repository,
    tree: gix::Tree<'_>,
    prefix: &str,
    out: &mut Vec<File>,
) -> Result<(), (String, String)> {
    let decoded = tree
        .decode()
        .map_err(|e| (prefix.to_string(), e.to_string()))?;
    for entry in decoded.entries.iter() {
        let name = entry.filename.to_string();
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let object = || {
            repo.find_object(entry.oid)
                .map_err(|e| (path.clone(), e.to_string()))
        };
        if entry.mode.is_tree() {
            walk(repo, object()?.into_tree(), &path, out)?;
        } else if entry.mode.is_blob() {
            out.push(File {
                data: object()?.detach().data,
                path,
            });
        }
        // Submodules and symlinks are not followed.
    }
    Ok(())
}
