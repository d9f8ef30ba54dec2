//! Git, for agents and the coordinator alike: a bare cache repository per
//! source URL, fetched only when the pinned
//! commit is not already there (a pin is a commit, so a cached commit costs
//! no network), and the cluster's directory read straight from the object
//! database (no worktree). Blocking (gix): run it in `spawn_blocking`.
//!
//! A fetch asks for the pinned commit alone, one commit deep (protocol v2
//! servers allow it); a server that refuses gets a fetch of its branches and
//! tags instead. The cache is bounded: past its limit, other repositories go
//! first, then this one is rebuilt holding only the pinned commit.
//!
//! Credentials ([`GitAuth`]) are read again before every fetch, so a rotated
//! Secret takes effect without a restart. HTTPS uses a username and password
//! or token (basic auth) or a bearer token, and may add a CA; SSH uses a key
//! and checks the host key strictly against `known_hosts`.

use crate::Commit;
pub use crate::domain::redact;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// An error from a library, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A Git transport error, kept whole but only ever shown with the
/// repository URL's password hidden. Its own messages can carry the URL,
/// and loggers print whole source chains, so the cause is not exposed as
/// `source()`: it is reachable through [`GitError::cause`] instead.
#[derive(Debug)]
pub struct GitError {
    shown: String,
    cause: BoxError,
}

impl GitError {
    fn new(url: &str, cause: impl Into<BoxError>) -> Self {
        let cause = cause.into();
        let shown = chain(&*cause).replace(url, &redact(url));
        GitError { shown, cause }
    }

    /// The library's error, for matching (never print it: see the type).
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.cause
    }
}

impl std::fmt::Display for GitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::error::Error for GitError {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The local cache could not be created or opened.
    #[error("git cache {}: {source}", .path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    /// The configured Git secret directory is not there.
    #[error("git credentials {}: the Git secret directory does not exist (is the Secret mounted?)", .path.display())]
    SecretMissing { path: PathBuf },
    /// Credentials could not be read or used.
    #[error("git credentials {}: {source}", .path.display())]
    Credentials {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    /// The server refused our credentials, or wanted some we do not have.
    #[error("authentication to {url} failed: {detail}")]
    Auth {
        url: String,
        /// What ssh or the server said, redacted.
        detail: String,
        #[source]
        source: GitError,
    },
    /// The SSH server's host key is not the one in known_hosts.
    #[error(
        "host key of {url} not verified against known_hosts (put the server's key in the Git secret's known_hosts): {detail}"
    )]
    HostKey {
        url: String,
        detail: String,
        #[source]
        source: GitError,
    },
    /// Fetching from the remote failed (network, TLS, protocol).
    #[error("fetching {url}: {detail}")]
    Fetch {
        url: String,
        detail: String,
        #[source]
        source: GitError,
    },
    /// The remote does not have the pinned commit.
    #[error("commit {commit} is not in {url}")]
    UnknownCommit { url: String, commit: String },
    /// A ref that names no commit in the repository.
    #[error("unknown ref {reference:?} in {url}: not a branch, tag or commit there")]
    UnknownRef { reference: String, url: String },
    /// The pinned commit has no such directory.
    #[error("path {path:?} does not exist at commit {commit}")]
    PathMissing { path: String, commit: String },
    /// A file over the size one file may have.
    #[error(
        "{path} at commit {commit} is {size} bytes, over the limit of {limit} bytes for one file"
    )]
    TooLarge {
        path: String,
        commit: String,
        size: u64,
        limit: u64,
    },
    /// More bytes of files than one read may hold.
    #[error("the files below {path:?} at commit {commit} are over {limit} bytes in all")]
    TooMuch {
        path: String,
        commit: String,
        limit: u64,
    },
    /// A symbolic link where Ferry reads files: never followed.
    #[error(
        "{path} at commit {commit} is a symbolic link: Ferry does not follow symbolic links in a cluster's directory"
    )]
    Symlink { path: String, commit: String },
    /// Reading objects from the cache failed.
    #[error("reading {what} at commit {commit}: {source}")]
    Read {
        what: String,
        commit: String,
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Whether the same fetch may work later with nothing changed here
    /// (the network, the server); credentials, host keys and missing
    /// commits or paths need someone to act.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Fetch { .. } | Error::Cache { .. } | Error::Read { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A file of the cluster's directory: its path below that directory and bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
}

/// Where Git credentials come from.
#[derive(Clone, Default)]
pub struct GitAuth {
    /// A directory (a mounted Secret) holding any of `username`, `password`
    /// (or `token`), `bearerToken`, `identity` (an SSH private key),
    /// `known_hosts` and `ca.crt`.
    pub secret_dir: Option<PathBuf>,
    /// Overrides `username` from the directory.
    pub username: Option<String>,
    /// Overrides `password` from the directory (a password or a token).
    pub password: Option<String>,
    /// Accept any SSH host key. For development only.
    pub ssh_insecure_ignore_host_key: bool,
}

impl std::fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitAuth")
            .field("secret_dir", &self.secret_dir)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field(
                "ssh_insecure_ignore_host_key",
                &self.ssh_insecure_ignore_host_key,
            )
            .finish()
    }
}

/// Credentials as read for one fetch.
#[derive(Clone, Default)]
struct Creds {
    username: Option<String>,
    password: Option<String>,
    bearer: Option<String>,
    identity: Option<Vec<u8>>,
    known_hosts: Option<PathBuf>,
    ca: Option<Vec<u8>>,
}

impl GitAuth {
    fn load(&self) -> Result<Creds> {
        let mut c = Creds::default();
        if let Some(dir) = &self.secret_dir {
            if !dir.is_dir() {
                return Err(Error::SecretMissing { path: dir.clone() });
            }
            let read = |name: &str| -> Result<Option<Vec<u8>>> {
                let p = dir.join(name);
                match std::fs::read(&p) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::Credentials {
                        path: p,
                        source: Box::new(e),
                    }),
                }
            };
            let text = |name: &str| -> Result<Option<String>> {
                Ok(read(name)?.map(|b| String::from_utf8_lossy(&b).trim().to_string()))
            };
            c.username = text("username")?;
            c.password = match text("password")? {
                Some(p) => Some(p),
                None => text("token")?,
            };
            c.bearer = text("bearerToken")?;
            c.identity = read("identity")?;
            c.ca = read("ca.crt")?;
            let kh = dir.join("known_hosts");
            if kh.exists() {
                c.known_hosts = Some(kh);
            }
        }
        if self.username.is_some() {
            c.username.clone_from(&self.username);
        }
        if self.password.is_some() {
            c.password.clone_from(&self.password);
        }
        Ok(c)
    }
}

/// Git repositories cached under one directory.
#[derive(Clone, Debug)]
pub struct Source {
    dir: PathBuf,
    auth: GitAuth,
    max_bytes: u64,
}

/// The largest file read from a repository (a manifest file; a multi-document
/// bundle of CRDs may run to a few MiB).
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// The most bytes of files one read may hold (a cluster's directory, or the
/// whole tree exported for kustomize).
pub const MAX_TOTAL_BYTES: u64 = 128 << 20;

/// The cache's default bound.
pub const DEFAULT_CACHE_BYTES: u64 = 512 << 20;

fn cache_name(url: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, url.as_bytes());
    let hex: String = digest.as_ref()[..10]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hex}.git")
}

fn is_ssh(url: &str) -> bool {
    gix::url::parse(gix::bstr::BStr::new(url)).is_ok_and(|u| u.scheme == gix::url::Scheme::Ssh)
}

fn is_http(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

/// Single-quotes `s` for `sh`.
fn sh_quote(s: &Path) -> String {
    format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"))
}

fn dir_size(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The whole error chain on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Sorts a failed fetch into authentication, host key or other failures,
/// using what ssh logged when it was ssh.
fn classify(url: &str, source: GitError, ssh_log: &str) -> Error {
    let message = source.to_string();
    // ssh's own words, without its banners and advice.
    let lines: Vec<&str> = ssh_log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('@'))
        .collect();
    let telling = [
        "host key",
        "Host key",
        "SHA256:",
        "Offending",
        "Permission denied",
        "Connection",
        "Could not",
        "No such",
    ];
    let mut kept: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| telling.iter().any(|t| l.contains(t)))
        .filter(|l| !l.starts_with("Add correct") && !l.starts_with("It is"))
        .collect();
    if kept.is_empty() {
        kept.extend(lines.last());
    }
    let log = kept.join("; ");
    let with_log = if log.is_empty() {
        message.clone()
    } else {
        format!("{log} ({message})")
    };
    // A password in the URL never reaches a status or a log.
    let shown = redact(url);
    let message = message.replace(url, &shown);
    let detail = with_log.replace(url, &shown);
    let url = shown;
    if log.contains("Host key verification failed")
        || log.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || log.contains("host key is known")
    {
        return Error::HostKey {
            url,
            detail,
            source,
        };
    }
    let lower = message.to_lowercase();
    if log.contains("Permission denied")
        || lower.contains("were not accepted by the remote")
        || lower.contains("no credentials were returned")
        || lower.contains("http status 401")
        || lower.contains("http status 403")
    {
        return Error::Auth {
            url,
            detail,
            source,
        };
    }
    Error::Fetch {
        url,
        detail,
        source,
    }
}

/// A commit's id, or the error naming it.
fn object_id(commit: &Commit) -> Result<gix::ObjectId> {
    gix::ObjectId::from_hex(commit.as_str().as_bytes()).map_err(|e| Error::Read {
        what: "the commit id".into(),
        commit: commit.to_string(),
        source: Box::new(e),
    })
}

/// HTTP transport options: an extra CA and a bearer token, when given.
fn http_options(
    creds: &Creds,
) -> Result<gix::protocol::transport::client::blocking_io::http::Options, BoxError> {
    use gix::protocol::transport::client::blocking_io::http;
    let certs = match &creds.ca {
        Some(pem) => Some(
            reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("ca.crt is not PEM certificates: {e}"))?,
        ),
        None => None,
    };
    let bearer = match &creds.bearer {
        Some(t) => Some(
            reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| "bearerToken holds characters a header cannot")?,
        ),
        None => None,
    };
    let mut backend = http::reqwest::Options::default();
    if let Some(certs) = certs {
        backend.configure_client = Some(Box::new(move |b: reqwest::blocking::ClientBuilder| {
            Ok(b.tls_certs_merge(certs.clone()))
        }));
    }
    if let Some(mut value) = bearer {
        value.set_sensitive(true);
        backend.configure_request = Some(Box::new(move |r: &mut reqwest::blocking::Request| {
            r.headers_mut()
                .insert(reqwest::header::AUTHORIZATION, value.clone());
            Ok(())
        }));
    }
    Ok(http::Options {
        backend: Some(std::sync::Arc::new(std::sync::Mutex::new(backend))),
        ..Default::default()
    })
}

impl Source {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Source {
            dir: dir.into(),
            auth: GitAuth::default(),
            max_bytes: DEFAULT_CACHE_BYTES,
        }
    }

    /// Uses these credentials for every fetch.
    pub fn with_auth(mut self, auth: GitAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Bounds the cache to about this many bytes.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    fn repo_path(&self, url: &str) -> PathBuf {
        self.dir.join(cache_name(url))
    }

    fn open(&self, url: &str, overrides: Vec<String>) -> Result<gix::Repository> {
        let path = self.repo_path(url);
        let err = |e: BoxError| Error::Cache {
            path: path.clone(),
            source: e,
        };
        if !path.join("HEAD").exists() {
            std::fs::create_dir_all(&path).map_err(|e| err(e.into()))?;
            gix::init_bare(&path).map_err(|e| err(e.into()))?;
        }
        gix::open_opts(
            &path,
            gix::open::Options::isolated().config_overrides(overrides),
        )
        .map_err(|e| err(e.into()))
    }

    fn ssh_dir(&self) -> PathBuf {
        self.dir.join(".ssh")
    }

    fn ssh_log(&self) -> String {
        std::fs::read_to_string(self.ssh_dir().join("log")).unwrap_or_default()
    }

    /// Empties ssh's log, so a failure is judged by this attempt's words.
    fn fresh_ssh_log(&self, url: &str) {
        if is_ssh(url) {
            let _ = std::fs::write(self.ssh_dir().join("log"), b"");
        }
    }

    /// Configuration for fetches: for SSH, the command with our key, its
    /// log, and strict host key checking.
    fn overrides(&self, url: &str, creds: &Creds) -> Result<Vec<String>> {
        if !is_ssh(url) {
            return Ok(vec![]);
        }
        let dir = self.ssh_dir();
        let io = |p: &Path, e: std::io::Error| Error::Cache {
            path: p.to_path_buf(),
            source: Box::new(e),
        };
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let log = dir.join("log");
        let mut cmd = format!(
            "ssh -E {} -o BatchMode=yes -o IdentitiesOnly=yes -o GlobalKnownHostsFile=/dev/null \
             -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4",
            sh_quote(&log)
        );
        if self.auth.ssh_insecure_ignore_host_key {
            cmd.push_str(" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null");
        } else {
            let kh = creds
                .known_hosts
                .clone()
                .unwrap_or_else(|| PathBuf::from("/dev/null"));
            cmd.push_str(&format!(
                " -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
                sh_quote(&kh)
            ));
        }
        if let Some(key) = &creds.identity {
            // ssh refuses a key others can read; a mounted Secret often is.
            let p = dir.join("identity");
            write_private(&p, key).map_err(|e| io(&p, e))?;
            cmd.push_str(&format!(" -i {}", sh_quote(&p)));
        }
        Ok(vec![
            format!("core.sshCommand={cmd}"),
            "ssh.variant=ssh".to_string(),
        ])
    }

    /// One fetch of `refspecs`.
    fn fetch_with(
        repo: &gix::Repository,
        url: &str,
        creds: &Creds,
        refspecs: &[&str],
        shallow: gix::remote::fetch::Shallow,
    ) -> Result<(), GitError> {
        let git = |e: BoxError| GitError::new(url, e);
        let remote = repo
            .remote_at(url)
            .map_err(|e| git(e.into()))?
            .with_refspecs(refspecs.iter().copied(), gix::remote::Direction::Fetch)
            .map_err(|e| git(e.into()))?;
        let mut conn = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| git(e.into()))?
            .with_credentials(credentials(creds));
        if is_http(url) && (creds.ca.is_some() || creds.bearer.is_some()) {
            conn = conn.with_transport_options(Box::new(http_options(creds).map_err(git)?));
        }
        conn.prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| git(e.into()))?
            .with_shallow(shallow)
            .receive(gix::progress::Discard, &AtomicBool::new(false))
            .map_err(|e| git(e.into()))?;
        Ok(())
    }

    /// Fetches what `id` needs into the cache for `url`: the commit alone
    /// where the server allows it, else its branches and tags.
    fn fetch(&self, url: &str, id: gix::ObjectId, creds: &Creds) -> Result<gix::Repository> {
        let overrides = self.overrides(url, creds)?;
        let repo = self.open(url, overrides.clone())?;
        let hex = id.to_string();
        let one = gix::remote::fetch::Shallow::DepthAtRemote(1.try_into().expect("1 > 0"));
        self.fresh_ssh_log(url);
        if let Err(m) = Self::fetch_with(&repo, url, creds, &[&hex], one) {
            match classify(url, m, &self.ssh_log()) {
                e @ (Error::Auth { .. } | Error::HostKey { .. }) => return Err(e),
                e => {
                    tracing::debug!(error = %e, "fetching the commit alone failed; fetching branches and tags")
                }
            }
        }
        if repo.has_object(id) {
            return Ok(repo);
        }
        self.fetch_branches_and_tags(&repo, url, creds)?;
        Ok(repo)
    }

    fn fetch_branches_and_tags(
        &self,
        repo: &gix::Repository,
        url: &str,
        creds: &Creds,
    ) -> Result<()> {
        self.fresh_ssh_log(url);
        Self::fetch_with(
            repo,
            url,
            creds,
            &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
            gix::remote::fetch::Shallow::NoChange,
        )
        .map_err(|m| classify(url, m, &self.ssh_log()))
    }

    /// Fetches every branch and tag of `url` into its cache, as a mirror
    /// does (the agent itself fetches single commits). Up to date, it
    /// transfers only the ref advertisement. Refs that moved or vanished
    /// upstream follow (`+`), as a ref resolution needs.
    pub fn fetch_refs(&self, url: &str) -> Result<()> {
        let creds = self.auth.load()?;
        let repo = self.open(url, self.overrides(url, &creds)?)?;
        self.fetch_branches_and_tags(&repo, url, &creds)
    }

    /// Resolves a branch, tag, full or short commit of `url` to a full
    /// commit, fetching every branch and tag first so branches are current.
    /// A full commit id already in the cache needs no fetch (a commit never
    /// changes), so a rollback to a known commit works while the server is
    /// down. (The coordinator's use; agents fetch single commits.)
    pub fn resolve(&self, url: &str, reference: &str) -> Result<Commit> {
        let unknown = || Error::UnknownRef {
            reference: reference.to_string(),
            url: redact(url),
        };
        if reference.is_empty() || reference.starts_with('-') || reference.contains("..") {
            return Err(unknown());
        }
        if let Ok(c) = Commit::parse(reference)
            && self.open(url, vec![])?.has_object(object_id(&c)?)
        {
            return Ok(c);
        }
        self.fetch_refs(url)?;
        let repo = self.open(url, vec![])?;
        let id = repo.rev_parse_single(reference).map_err(|_| unknown())?;
        let commit = id
            .object()
            .map_err(|_| unknown())?
            .peel_to_commit()
            .map_err(|_| unknown())?;
        Commit::parse(&commit.id.to_string()).map_err(|_| unknown())
    }

    /// A branch or tag of `url` as the cache has it (no fetch).
    pub fn cached_tip(&self, url: &str, reference: &str) -> Result<Option<Commit>> {
        let repo = self.open(url, vec![])?;
        let Ok(id) = repo.rev_parse_single(reference) else {
            return Ok(None);
        };
        let commit = id.object().ok().and_then(|o| o.peel_to_commit().ok());
        Ok(commit.and_then(|c| Commit::parse(&c.id.to_string()).ok()))
    }

    /// How many commits `tip` has that `base` does not, both read from the
    /// cache (counting stops at `limit`); `None` when the cache lacks
    /// `base` (it is not in the repository's history).
    pub fn commits_ahead(
        &self,
        url: &str,
        tip: &Commit,
        base: &Commit,
        limit: usize,
    ) -> Result<Option<usize>> {
        let repo = self.open(url, vec![])?;
        let (tip, base) = (object_id(tip)?, object_id(base)?);
        if !repo.has_object(base) {
            return Ok(None);
        }
        let ancestors = |start: gix::ObjectId, bound: usize| {
            let mut seen = std::collections::HashSet::new();
            let mut todo = vec![start];
            while let Some(id) = todo.pop() {
                if seen.len() >= bound || !seen.insert(id) {
                    continue;
                }
                if let Ok(c) = repo.find_commit(id) {
                    todo.extend(c.parent_ids().map(|p| p.detach()));
                }
            }
            seen
        };
        let behind = ancestors(base, 1_000_000);
        let mut count = 0;
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![tip];
        while let Some(id) = todo.pop() {
            if behind.contains(&id) || !seen.insert(id) {
                continue;
            }
            count += 1;
            if count >= limit {
                break;
            }
            if let Ok(c) = repo.find_commit(id) {
                todo.extend(c.parent_ids().map(|p| p.detach()));
            }
        }
        Ok(Some(count))
    }

    /// Keeps the cache within its bound: other repositories go first, then
    /// this one is rebuilt with only `id`. Returns the repository to use.
    fn bound(
        &self,
        url: &str,
        repo: gix::Repository,
        id: gix::ObjectId,
        creds: &Creds,
    ) -> Result<gix::Repository> {
        let current = self.repo_path(url);
        let repos: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "git"))
                    .collect()
            })
            .unwrap_or_default();
        let total: u64 = repos.iter().map(|p| dir_size(p)).sum();
        if total <= self.max_bytes {
            return Ok(repo);
        }
        for p in repos.iter().filter(|p| **p != current) {
            tracing::info!(path = %p.display(), "git cache over its bound: removing another repository");
            let _ = std::fs::remove_dir_all(p);
        }
        let size = dir_size(&current);
        if size <= self.max_bytes {
            return Ok(repo);
        }
        tracing::info!(
            bytes = size,
            bound = self.max_bytes,
            "git cache over its bound: keeping only the pinned commit"
        );
        drop(repo);
        std::fs::remove_dir_all(&current).map_err(|e| Error::Cache {
            path: current.clone(),
            source: Box::new(e),
        })?;
        let repo = self.fetch(url, id, creds)?;
        Ok(repo)
    }

    /// The raw data of `commit`'s object, from the cache, for a signature
    /// check. Never touches the network.
    pub fn commit_object(&self, url: &str, commit: &Commit) -> Result<Vec<u8>> {
        let repo = self.open(url, vec![])?;
        let id = object_id(commit)?;
        let read = |e: BoxError| Error::Read {
            what: "the commit object".into(),
            commit: commit.to_string(),
            source: e,
        };
        let object = repo.find_object(id).map_err(|e| read(e.into()))?;
        Ok(object.data.clone())
    }

    /// The annotated tags of `url` naming `commit`, as (tag name, tag object
    /// data). With `ask`, the server is asked (only tag refs are listed, and
    /// only the tag objects naming the commit are fetched: an agent never
    /// fetches every tag); without, the cache's own tags are read (the
    /// coordinator fetched them all when it resolved the ref).
    pub fn tags_naming(
        &self,
        url: &str,
        commit: &Commit,
        ask: bool,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let target = object_id(commit)?;
        let creds = if ask { Some(self.auth.load()?) } else { None };
        let repo = match &creds {
            Some(c) => self.open(url, self.overrides(url, c)?)?,
            None => self.open(url, vec![])?,
        };
        let read = |e: BoxError| Error::Read {
            what: "tags".into(),
            commit: commit.to_string(),
            source: e,
        };
        let mut named: Vec<(String, gix::ObjectId)> = vec![];
        if let Some(creds) = &creds {
            self.fresh_ssh_log(url);
            let listed = Self::list_tags(&repo, url, creds)
                .map_err(|m| classify(url, m, &self.ssh_log()))?;
            named.extend(
                listed
                    .into_iter()
                    .filter(|(_, _, peeled)| *peeled == target)
                    .map(|(name, tag, _)| (name, tag)),
            );
            let missing: Vec<String> = named
                .iter()
                .filter(|(_, t)| !repo.has_object(*t))
                .map(|(_, t)| t.to_string())
                .collect();
            if !missing.is_empty() {
                let wants: Vec<&str> = missing.iter().map(String::as_str).collect();
                let one = gix::remote::fetch::Shallow::DepthAtRemote(1.try_into().expect("1 > 0"));
                self.fresh_ssh_log(url);
                Self::fetch_with(&repo, url, creds, &wants, one)
                    .map_err(|m| classify(url, m, &self.ssh_log()))?;
            }
        } else {
            let refs = repo.references().map_err(|e| read(e.into()))?;
            for r in refs.tags().map_err(|e| read(e.into()))?.flatten() {
                let name = r.name().shorten().to_string();
                let id = r.id().detach();
                let Ok(object) = repo.find_object(id) else {
                    continue;
                };
                if object.kind != gix::object::Kind::Tag {
                    continue;
                }
                let peeled = object.peel_to_kind(gix::object::Kind::Commit).map(|c| c.id);
                if peeled.is_ok_and(|c| c == target) {
                    named.push((name, id));
                }
            }
        }
        let mut out = vec![];
        for (name, id) in named {
            if let Ok(object) = repo.find_object(id) {
                out.push((name, object.data.clone()));
            }
        }
        Ok(out)
    }

    /// The server's annotated tags: (name, tag object, commit it peels to).
    fn list_tags(
        repo: &gix::Repository,
        url: &str,
        creds: &Creds,
    ) -> Result<Vec<(String, gix::ObjectId, gix::ObjectId)>, GitError> {
        let git = |e: BoxError| GitError::new(url, e);
        let remote = repo
            .remote_at(url)
            .map_err(|e| git(e.into()))?
            .with_refspecs(["+refs/tags/*:refs/tags/*"], gix::remote::Direction::Fetch)
            .map_err(|e| git(e.into()))?;
        let mut conn = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| git(e.into()))?
            .with_credentials(credentials(creds));
        if is_http(url) && (creds.ca.is_some() || creds.bearer.is_some()) {
            conn = conn.with_transport_options(Box::new(http_options(creds).map_err(git)?));
        }
        let prepared = conn
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| git(e.into()))?;
        let mut out = vec![];
        for r in &prepared.ref_map().remote_refs {
            if let gix::protocol::handshake::Ref::Peeled {
                full_ref_name,
                tag,
                object,
            } = r
            {
                let name = full_ref_name.to_string();
                let name = name.strip_prefix("refs/tags/").unwrap_or(&name).to_string();
                out.push((name, *tag, *object));
            }
        }
        Ok(out)
    }

    /// Makes sure `commit` is in the cache; returns whether it had to fetch.
    pub fn ensure(&self, url: &str, commit: &Commit) -> Result<(gix::Repository, bool)> {
        let id = object_id(commit)?;
        let repo = self.open(url, vec![])?;
        if repo.has_object(id) {
            return Ok((repo, false));
        }
        drop(repo);
        let creds = self.auth.load()?;
        let repo = self.fetch(url, id, &creds)?;
        let unknown = || Error::UnknownCommit {
            url: redact(url),
            commit: commit.to_string(),
        };
        if !repo.has_object(id) {
            return Err(unknown());
        }
        let repo = self.bound(url, repo, id, &creds)?;
        if !repo.has_object(id) {
            return Err(unknown());
        }
        Ok((repo, true))
    }

    /// Every file below `path` at `commit` if that commit is cached;
    /// `None` if it is not. Never touches the network.
    pub fn cached_files(
        &self,
        url: &str,
        commit: &Commit,
        path: &str,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Result<Option<Vec<File>>> {
        let id = object_id(commit)?;
        if !self.open(url, vec![])?.has_object(id) {
            return Ok(None);
        }
        self.files(url, commit, path, wanted).map(|(f, _)| Some(f))
    }

    /// The files below `path` at `commit` that `wanted` names (by their
    /// path below `path`), fetching only if the commit is not cached yet;
    /// also says whether it fetched. Other files are never read. Each file
    /// is sized before it is read (at most [`MAX_FILE_BYTES`], and
    /// [`MAX_TOTAL_BYTES`] in all); a symbolic link below `path` is an error.
    pub fn files(
        &self,
        url: &str,
        commit: &Commit,
        path: &str,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Result<(Vec<File>, bool)> {
        let (repo, fetched) = self.ensure(url, commit)?;
        let tree = subtree(&repo, commit, path)?;
        let mut walk = Walk::new(&repo, commit, path, wanted);
        walk.tree(tree, "")?;
        if let Some(link) = walk.symlinks.first() {
            return Err(Error::Symlink {
                path: join(path, link),
                commit: commit.to_string(),
            });
        }
        let mut files = walk.files;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((files, fetched))
    }

    /// Writes the whole tree at `commit` below `dest` (for kustomize, whose
    /// overlays reach outside the cluster's directory). Symbolic links are
    /// never written (so nothing can point kustomize outside the tree); one
    /// inside `dir`, the cluster's own directory, is an error naming it.
    pub fn export(&self, url: &str, commit: &Commit, dir: &str, dest: &Path) -> Result<()> {
        let (repo, _) = self.ensure(url, commit)?;
        let tree = subtree(&repo, commit, "")?;
        let all = |_: &str| true;
        let mut walk = Walk::new(&repo, commit, "", &all);
        walk.tree(tree, "")?;
        let dir = dir.trim_matches('/');
        if let Some(link) = walk
            .symlinks
            .iter()
            .find(|l| dir.is_empty() || l.starts_with(&format!("{dir}/")))
        {
            return Err(Error::Symlink {
                path: link.clone(),
                commit: commit.to_string(),
            });
        }
        for f in walk.files {
            let p = dest.join(&f.path);
            let io = |e: std::io::Error| Error::Read {
                what: f.path.clone(),
                commit: commit.to_string(),
                source: Box::new(e),
            };
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            std::fs::write(&p, &f.data).map_err(io)?;
        }
        Ok(())
    }
}

/// `a/b` of a directory and a path below it.
fn join(dir: &str, below: &str) -> String {
    let dir = dir.trim_matches('/');
    if dir.is_empty() {
        below.to_string()
    } else {
        format!("{dir}/{below}")
    }
}

/// The tree at `path` of `commit`.
fn subtree<'r>(repo: &'r gix::Repository, commit: &Commit, path: &str) -> Result<gix::Tree<'r>> {
    let read = |what: &str, e: BoxError| Error::Read {
        what: what.to_string(),
        commit: commit.to_string(),
        source: e,
    };
    let root = repo
        .find_commit(object_id(commit)?)
        .map_err(|e| read("the commit", e.into()))?
        .tree()
        .map_err(|e| read("the root tree", e.into()))?;
    let path = path.trim_matches('/');
    if path.is_empty() {
        return Ok(root);
    }
    let missing = || Error::PathMissing {
        path: path.to_string(),
        commit: commit.to_string(),
    };
    let entry = root
        .lookup_entry_by_path(Path::new(path))
        .map_err(|e| read(path, e.into()))?
        .ok_or_else(missing)?;
    if !entry.mode().is_tree() {
        return Err(missing());
    }
    Ok(entry
        .object()
        .map_err(|e| read(path, e.into()))?
        .into_tree())
}

/// Answers gix's credential requests with the configured username and
/// password (or token); asks for nothing else.
fn credentials(
    creds: &Creds,
) -> impl FnMut(
    gix::credentials::helper::Action,
) -> gix::Result<Option<gix::credentials::protocol::Outcome>>
+ 'static {
    let account = creds
        .password
        .clone()
        .map(|password| gix::sec::identity::Account {
            username: creds.username.clone().unwrap_or_else(|| "git".into()),
            password,
            oauth_refresh_token: None,
        });
    move |action| {
        Ok(match (action, &account) {
            (gix::credentials::helper::Action::Get(ctx), Some(a)) => {
                Some(gix::credentials::protocol::Outcome {
                    identity: a.clone(),
                    next: ctx.into(),
                })
            }
            _ => None,
        })
    }
}

/// A walk of a tree: the wanted files (sized before they are read) and the
/// symbolic links met, never followed.
struct Walk<'a> {
    repo: &'a gix::Repository,
    commit: &'a Commit,
    /// Where the walk started, for naming files.
    base: &'a str,
    wanted: &'a dyn Fn(&str) -> bool,
    files: Vec<File>,
    symlinks: Vec<String>,
    total: u64,
}

impl<'a> Walk<'a> {
    fn new(
        repo: &'a gix::Repository,
        commit: &'a Commit,
        base: &'a str,
        wanted: &'a dyn Fn(&str) -> bool,
    ) -> Self {
        Walk {
            repo,
            commit,
            base,
            wanted,
            files: vec![],
            symlinks: vec![],
            total: 0,
        }
    }

    fn read_err(&self, path: &str, e: BoxError) -> Error {
        Error::Read {
            what: join(self.base, path),
            commit: self.commit.to_string(),
            source: e,
        }
    }

    fn tree(&mut self, tree: gix::Tree<'_>, prefix: &str) -> Result<()> {
        let decoded = tree.decode().map_err(|e| self.read_err(prefix, e.into()))?;
        for entry in decoded.entries.iter() {
            let name = entry.filename.to_string();
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if entry.mode.is_tree() {
                let sub = self
                    .repo
                    .find_object(entry.oid)
                    .map_err(|e| self.read_err(&path, e.into()))?
                    .into_tree();
                self.tree(sub, &path)?;
            } else if entry.mode.is_link() {
                self.symlinks.push(path);
            } else if entry.mode.is_blob() && (self.wanted)(&path) {
                let size = self
                    .repo
                    .find_header(entry.oid)
                    .map_err(|e| self.read_err(&path, e.into()))?
                    .size();
                if size > MAX_FILE_BYTES {
                    return Err(Error::TooLarge {
                        path: join(self.base, &path),
                        commit: self.commit.to_string(),
                        size,
                        limit: MAX_FILE_BYTES,
                    });
                }
                self.total += size;
                if self.total > MAX_TOTAL_BYTES {
                    return Err(Error::TooMuch {
                        path: self.base.to_string(),
                        commit: self.commit.to_string(),
                        limit: MAX_TOTAL_BYTES,
                    });
                }
                let data = self
                    .repo
                    .find_object(entry.oid)
                    .map_err(|e| self.read_err(&path, e.into()))?
                    .detach()
                    .data;
                self.files.push(File { path, data });
            }
            // Submodules are not followed.
        }
        Ok(())
    }
}

/// Writes `data` to `p` readable by its owner only.
fn write_private(p: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(p);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)?;
    f.write_all(data)?;
    // An OpenSSH key must end with a newline.
    if !data.ends_with(b"\n") {
        f.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// A repository with three commits, each adding a 64 KiB file of noise.
    fn upstream() -> (tempfile::TempDir, String, Vec<Commit>) {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        let mut commits = vec![];
        for i in 0..3 {
            let noise: Vec<u8> = (0..65536).map(|_| fastrand::u8(..)).collect();
            std::fs::create_dir_all(dir.path().join("c")).unwrap();
            std::fs::write(dir.path().join(format!("c/f{i}.bin")), noise).unwrap();
            git(dir.path(), &["add", "."]);
            git(dir.path(), &["commit", "-q", "-m", &format!("c{i}")]);
            commits.push(Commit::parse(&git(dir.path(), &["rev-parse", "HEAD"])).unwrap());
        }
        let url = format!("file://{}", dir.path().display());
        (dir, url, commits)
    }

    #[test]
    fn fetches_only_the_pinned_commit() {
        let (_up, url, commits) = upstream();
        let cache = tempfile::tempdir().unwrap();
        let source = Source::new(cache.path());
        let (files, fetched) = source.files(&url, &commits[1], "c", &|_| true).unwrap();
        assert!(fetched);
        assert_eq!(
            files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["f0.bin", "f1.bin"]
        );
        let repo = source.open(&url, vec![]).unwrap();
        let id = |c: &Commit| gix::ObjectId::from_hex(c.as_str().as_bytes()).unwrap();
        assert!(!repo.has_object(id(&commits[0])), "history was fetched");
        assert!(
            !repo.has_object(id(&commits[2])),
            "a later commit was fetched"
        );
        // Cached: no second fetch.
        assert!(!source.files(&url, &commits[1], "c", &|_| true).unwrap().1);
    }

    #[test]
    fn unknown_commit_and_missing_path_are_distinct_errors() {
        let (_up, url, commits) = upstream();
        let cache = tempfile::tempdir().unwrap();
        let source = Source::new(cache.path());
        let absent = Commit::parse("0123456789abcdef0123456789abcdef01234567").unwrap();
        let e = source.files(&url, &absent, "c", &|_| true).unwrap_err();
        assert!(matches!(e, Error::UnknownCommit { .. }), "{e}");
        assert!(e.to_string().contains("0123456789abcdef"), "{e}");
        let e = source
            .files(&url, &commits[0], "nope", &|_| true)
            .unwrap_err();
        assert!(matches!(e, Error::PathMissing { .. }), "{e}");
        assert!(e.to_string().contains("\"nope\""), "{e}");
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let (_up, url, commits) = upstream();
        let (_other, other_url, other_commits) = upstream();
        let cache = tempfile::tempdir().unwrap();
        // Room for about one commit's objects (64 KiB of noise each).
        let source = Source::new(cache.path()).with_max_bytes(150 << 10);
        source
            .files(&other_url, &other_commits[0], "c", &|_| true)
            .unwrap();
        source.files(&url, &commits[0], "c", &|_| true).unwrap();
        assert!(
            !cache.path().join(cache_name(&other_url)).exists(),
            "another repository was kept past the bound"
        );
        for c in &commits[1..] {
            let (files, _) = source.files(&url, c, "c", &|_| true).unwrap();
            assert!(!files.is_empty());
            let size = dir_size(cache.path());
            assert!(size <= 400 << 10, "cache holds {size} bytes");
        }
        let repo = source.open(&url, vec![]).unwrap();
        let id = gix::ObjectId::from_hex(commits[0].as_str().as_bytes()).unwrap();
        assert!(!repo.has_object(id), "an old commit survived the rebuild");
    }

    #[test]
    fn auth_failures_are_told_apart() {
        let g = |url: &str, m: &str| GitError::new(url, m.to_string());
        let e = classify(
            "ssh://git@h/r",
            g("ssh://git@h/r", "Transport handshake failed"),
            "Host key verification failed.\n",
        );
        assert!(matches!(e, Error::HostKey { .. }), "{e}");
        let e = classify(
            "ssh://git@h/r",
            g("ssh://git@h/r", "x"),
            "git@h: Permission denied (publickey).",
        );
        assert!(matches!(e, Error::Auth { .. }), "{e}");
        let e = classify(
            "https://h/r",
            g(
                "https://h/r",
                "Credentials provided for \"https://h/r\" were not accepted by the remote",
            ),
            "",
        );
        assert!(matches!(e, Error::Auth { .. }), "{e}");
        let e = classify("https://h/r", g("https://h/r", "connection refused"), "");
        assert!(matches!(e, Error::Fetch { .. }), "{e}");
    }

    #[test]
    fn passwords_in_urls_are_never_shown() {
        assert_eq!(
            redact("https://bot:tok3n@git.example.com/fleet.git"),
            "https://bot:***@git.example.com/fleet.git"
        );
        assert_eq!(redact("ssh://git@host/r"), "ssh://git@host/r");
        assert_eq!(redact("https://host/a@b"), "https://host/a@b");
        let url = "https://bot:tok3n@h/r";
        let e = classify(
            url,
            GitError::new(
                url,
                "Credentials provided for \"https://bot:tok3n@h/r\" were not accepted by the remote"
                    .to_string(),
            ),
            "",
        );
        assert!(!e.to_string().contains("tok3n"), "{e}");
        // Nor through the source chain loggers print.
        let mut cur: Option<&dyn std::error::Error> = Some(&e);
        while let Some(c) = cur {
            assert!(!c.to_string().contains("tok3n"), "{c}");
            cur = c.source();
        }
        assert!(matches!(e, Error::Auth { .. }), "{e}");
    }

    #[test]
    fn credentials_come_from_the_secret_and_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("username"), "robot\n").unwrap();
        std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
        let mut auth = GitAuth {
            secret_dir: Some(dir.path().into()),
            ..Default::default()
        };
        let c = auth.load().unwrap();
        assert_eq!(c.username.as_deref(), Some("robot"));
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        auth.password = Some("from-env".into());
        let missing = GitAuth {
            secret_dir: Some(dir.path().join("nope")),
            ..Default::default()
        };
        let e = missing.load().err().expect("a missing secret is an error");
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert_eq!(auth.load().unwrap().password.as_deref(), Some("from-env"));
        assert!(
            !format!("{auth:?}").contains("from-env"),
            "Debug shows the secret"
        );
    }
}
