//! The fleet's Git repository as the coordinator reads it: ref resolution
//! (branch, tag or short commit to a full commit) through the Git code the
//! agents use, with the coordinator's own credentials (a directory like an
//! agent's Git Secret, never a password in a URL). Blocking (gix); callers
//! run it in `spawn_blocking`. Never writes upstream.

use ferry_proto::Commit;
use ferry_proto::git::{GitAuth, Source};
use std::path::PathBuf;
use std::sync::Mutex;

pub use ferry_proto::git::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The fleet repository: its URL and the local cache.
pub struct Repo {
    url: String,
    source: Source,
    /// One fetch at a time into the cache.
    lock: Mutex<()>,
}

impl Repo {
    pub fn new(url: impl Into<String>, cache: PathBuf, auth: GitAuth) -> Self {
        Repo {
            url: url.into(),
            // The coordinator keeps whole histories: no bound.
            source: Source::new(cache).with_auth(auth).with_max_bytes(u64::MAX),
            lock: Mutex::new(()),
        }
    }

    /// Resolves a branch, tag, full or short commit to a full commit,
    /// fetching first so branches are current; a full commit id already in
    /// the cache needs no fetch, so rolling back to a known commit works
    /// while the Git server is down.
    pub fn resolve(&self, reference: &str) -> Result<Commit> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.source.resolve(&self.url, reference)
    }
}
