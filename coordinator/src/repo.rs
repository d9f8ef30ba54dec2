//! The fleet's Git repository as the coordinator sees it: a bare cache that
//! it fetches into (all branches and tags) to resolve refs to full commits.
//! Blocking (gix); callers run it in `spawn_blocking`. Never writes upstream.

use ferry_proto::Commit;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cache repository could not be created or opened.
    #[error("opening the repository cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
    /// Fetching from the repository failed.
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
    /// A ref that names no commit in the repository.
    #[error("unknown ref {reference:?} in {url}: not a branch, tag or commit there")]
    UnknownRef { reference: String, url: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The fleet repository: its URL and the local cache.
pub struct Repo {
    url: String,
    cache: PathBuf,
    /// One fetch at a time into the cache.
    lock: Mutex<()>,
}

impl Repo {
    pub fn new(url: impl Into<String>, cache: PathBuf) -> Self {
        Repo {
            url: url.into(),
            cache,
            lock: Mutex::new(()),
        }
    }

    fn open(&self) -> Result<gix::Repository> {
        let err = |e: &dyn std::fmt::Display| Error::Cache {
            path: self.cache.clone(),
            message: e.to_string(),
        };
        if self.cache.join("HEAD").exists() {
            gix::open(&self.cache).map_err(|e| err(&e))
        } else {
            std::fs::create_dir_all(&self.cache).map_err(|e| err(&e))?;
            gix::init_bare(&self.cache).map_err(|e| err(&e))
        }
    }

    /// Fetches every branch and tag, mirror-style.
    fn fetch(&self, repo: &gix::Repository) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| Error::Fetch {
            url: self.url.clone(),
            message: e.to_string(),
        };
        let remote = repo
            .remote_at(self.url.as_str())
            .map_err(|e| err(&e))?
            .with_refspecs(
                ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                gix::remote::Direction::Fetch,
            )
            .map_err(|e| err(&e))?;
        remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| err(&e))?
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| err(&e))?
            .receive(gix::progress::Discard, &AtomicBool::new(false))
            .map_err(|e| err(&e))?;
        Ok(())
    }

    /// Resolves a branch, tag, full or short commit to a full commit,
    /// fetching first so branches are current. A full commit id already in
    /// the cache needs no fetch (a commit never changes), so rolling back to
    /// a known commit works while the Git server is down.
    pub fn resolve(&self, reference: &str) -> Result<Commit> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let repo = self.open()?;
        if let Ok(c) = Commit::parse(reference)
            && gix::ObjectId::from_hex(c.as_str().as_bytes())
                .is_ok_and(|id| repo.find_commit(id).is_ok())
        {
            return Ok(c);
        }
        self.fetch(&repo)?;
        let unknown = || Error::UnknownRef {
            reference: reference.to_string(),
            url: self.url.clone(),
        };
        if reference.is_empty() || reference.starts_with('-') || reference.contains("..") {
            return Err(unknown());
        }
        let id = repo.rev_parse_single(reference).map_err(|_| unknown())?;
        let commit = id
            .object()
            .map_err(|_| unknown())?
            .peel_to_commit()
            .map_err(|_| unknown())?;
        Commit::parse(&commit.id.to_string()).map_err(|_| unknown())
    }
}
