//! The fleet's Git repository as the coordinator reads it: ref resolution
//! (branch, tag or short commit to a full commit) through the Git code the
//! agents use, with the coordinator's own credentials (a directory like an
//! agent's Git Secret, never a password in a URL), and, with verify keys,
//! the signature check that refuses a pin or rollout of a commit agents
//! would refuse. Blocking (gix); callers run it in `spawn_blocking`. Never
//! writes upstream.

use ferry_proto::Commit;
use ferry_proto::git::{GitAuth, Source};
use ferry_proto::verify::{Mode, Policy, PolicyError, Refused, Signer};
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the repository failed, or the ref names nothing.
    #[error(transparent)]
    Git(#[from] ferry_proto::git::Error),
    /// The commit does not verify under the coordinator's keys.
    #[error("{0}; not accepted (the coordinator's --verify-keys)")]
    Refused(#[from] Refused),
    /// The coordinator's key files could not be used.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The fleet repository: its URL and the local cache.
pub struct Repo {
    url: String,
    source: Source,
    /// Key files (read again at every check) and what must be signed.
    verify: Option<(PathBuf, Mode)>,
    /// One fetch at a time into the cache.
    lock: Mutex<()>,
}

impl Repo {
    pub fn new(url: impl Into<String>, cache: PathBuf, auth: GitAuth) -> Self {
        Repo {
            url: url.into(),
            // The coordinator keeps whole histories: no bound.
            source: Source::new(cache).with_auth(auth).with_max_bytes(u64::MAX),
            verify: None,
            lock: Mutex::new(()),
        }
    }

    /// Checks every commit resolved from now on against the keys in `dir`.
    pub fn with_verify(mut self, dir: PathBuf, mode: Mode) -> Self {
        self.verify = Some((dir, mode));
        self
    }

    /// How far a mirror at `mirror_tip` of `branch` lags the repository:
    /// fetched once per call of [`Repo::refresh`], then read from the cache.
    pub fn lag(&self, branch: &str, mirror_tip: &str) -> String {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let up = match self.source.cached_tip(&self.url, branch) {
            Ok(Some(c)) => c,
            Ok(None) => return "not upstream".into(),
            Err(e) => return format!("upstream unknown: {e}"),
        };
        let Ok(mirror) = Commit::parse(mirror_tip) else {
            return "?".into();
        };
        if up == mirror {
            return "in step".into();
        }
        match self.source.commits_ahead(&self.url, &up, &mirror, 100_000) {
            Ok(Some(0)) => "ahead of upstream".into(),
            Ok(Some(n)) => format!("{n} commit(s) behind (upstream at {})", up.short()),
            Ok(None) => format!("diverged (upstream at {})", up.short()),
            Err(e) => format!("upstream unknown: {e}"),
        }
    }

    /// How many commits `target` has that `mirror_tip` lacks, from the
    /// cache (no fetch); `None` when unknown.
    pub fn behind(&self, target: &Commit, mirror_tip: &str) -> Option<usize> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let tip = Commit::parse(mirror_tip).ok()?;
        self.source
            .commits_ahead(&self.url, target, &tip, 100_000)
            .ok()
            .flatten()
    }

    /// Fetches every branch and tag (for [`Repo::lag`]).
    pub fn refresh(&self) -> Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.source.fetch_refs(&self.url)?;
        Ok(())
    }

    /// Resolves a branch, tag, full or short commit to a full commit,
    /// fetching first so branches are current; a full commit id already in
    /// the cache needs no fetch, so rolling back to a known commit works
    /// while the Git server is down. With verify keys, the commit must
    /// verify; its signer comes back.
    pub fn resolve(&self, reference: &str) -> Result<(Commit, Option<Signer>)> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let commit = self.source.resolve(&self.url, reference)?;
        let Some((dir, mode)) = &self.verify else {
            return Ok((commit, None));
        };
        let policy = Policy::load(dir, *mode)?;
        let data = self.source.commit_object(&self.url, &commit)?;
        let mut tags = vec![];
        if *mode == Mode::Tag {
            tags = self.source.tags_naming(&self.url, &commit, false)?;
            if tags.is_empty() {
                // A full commit id resolves from the cache without a fetch:
                // the tags naming it may be newer than the cache.
                self.source.fetch_refs(&self.url)?;
                tags = self.source.tags_naming(&self.url, &commit, false)?;
            }
        }
        let signer = policy.verify(&commit, &data, &tags)?;
        Ok((commit, Some(signer)))
    }
}
