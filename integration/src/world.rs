//! A whole Ferry world in one process, for end-to-end tests, the sandbox and
//! the benchmarks: a fleet repository served by a real `git daemon`, a
//! throwaway PKI, a coordinator with mTLS on a SQLite data dir, and one
//! emulated cluster (a kube-emulator) with its agent per cluster.

use anyhow::{Context, Result, bail};
use ferry_coordinator::{Config as CoordinatorConfig, Coordinator};
use ferry_proto::DialConfig;
use ferry_proto::v1::admin_client::AdminClient;
use ferry_proto::v1::{Cluster, GetClusterRequest, Health, Phase, StatusReport};
use kube_emulator::{Config as EmulatorConfig, Controllers, Emulator};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Ferry Tests")
        .env("GIT_AUTHOR_EMAIL", "tests@ferry.invalid")
        .env("GIT_COMMITTER_NAME", "Ferry Tests")
        .env("GIT_COMMITTER_EMAIL", "tests@ferry.invalid")
        .output()
        .with_context(|| format!("running git {args:?}"))?;
    if !out.status.success() {
        bail!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A fleet repository: a work tree to commit from, and a bare repository
/// served by `git daemon` over git://.
pub struct GitServer {
    pub work: PathBuf,
    pub bare: PathBuf,
    pub url: String,
    daemon: Child,
}

impl GitServer {
    pub fn start(root: &Path) -> Result<GitServer> {
        let work = root.join("work");
        let bare = root.join("served/fleet.git");
        std::fs::create_dir_all(&work)?;
        std::fs::create_dir_all(bare.parent().expect("has a parent"))?;
        git(&work, &["init", "-q", "-b", "main"])?;
        git(
            root,
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                bare.to_str().expect("utf-8 path"),
            ],
        )?;
        git(
            &work,
            &[
                "remote",
                "add",
                "origin",
                bare.to_str().expect("utf-8 path"),
            ],
        )?;
        let base = root.join("served");
        // `git daemon` would run git-daemon as its child, which killing `git`
        // leaves behind (still serving): run git-daemon itself.
        let daemon_bin = git(root, &["--exec-path"])
            .map(|p| PathBuf::from(p.trim()).join("git-daemon"))
            .ok()
            .filter(|p| p.exists())
            .context("git-daemon is missing (Debian package git-daemon-sysvinit or git)")?;
        // git daemon cannot pick its own port; retry if another test took ours.
        for _ in 0..20 {
            let port = free_port()?;
            let mut daemon = Command::new(&daemon_bin)
                .args([
                    "--reuseaddr",
                    "--export-all",
                    "--informative-errors",
                    "--listen=127.0.0.1",
                    &format!("--port={port}"),
                    &format!("--base-path={}", base.display()),
                    base.to_str().expect("utf-8 path"),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting git daemon (Debian package git-daemon-sysvinit or git)")?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Some(status) = daemon.try_wait()? {
                    tracing::debug!(%status, port, "git daemon exited; trying another port");
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(GitServer {
                        work,
                        bare,
                        url: format!("git://127.0.0.1:{port}/fleet.git"),
                        daemon,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        bail!("git daemon did not start")
    }

    /// Writes files (path -> content; `None` deletes), commits and pushes.
    /// Returns the new commit.
    pub fn commit(&self, message: &str, files: &[(&str, Option<&str>)]) -> Result<String> {
        for (path, content) in files {
            let p = self.work.join(path);
            match content {
                Some(c) => {
                    std::fs::create_dir_all(p.parent().expect("has a parent"))?;
                    std::fs::write(&p, c)?;
                }
                None => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        git(&self.work, &["add", "-A"])?;
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        )?;
        git(&self.work, &["push", "-q", "origin", "main"])?;
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Like [`GitServer::commit`], signed (`git commit -S`) with the given
    /// Git configuration (`gpg.format=ssh`, `user.signingkey=…`).
    pub fn commit_signed(
        &self,
        message: &str,
        files: &[(&str, Option<&str>)],
        config: &[String],
    ) -> Result<String> {
        for (path, content) in files {
            let p = self.work.join(path);
            match content {
                Some(c) => {
                    std::fs::create_dir_all(p.parent().expect("has a parent"))?;
                    std::fs::write(&p, c)?;
                }
                None => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        git(&self.work, &["add", "-A"])?;
        let mut args: Vec<&str> = config.iter().map(String::as_str).collect();
        args.extend(["commit", "-q", "-S", "--allow-empty", "-m", message]);
        git(&self.work, &args)?;
        git(&self.work, &["push", "-q", "origin", "main"])?;
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// An annotated tag of `commit`, signed (`-s`) with `config` when given.
    pub fn annotated_tag(&self, name: &str, commit: &str, config: Option<&[String]>) -> Result<()> {
        let mut args: Vec<&str> = config.unwrap_or(&[]).iter().map(String::as_str).collect();
        args.extend([
            "tag",
            if config.is_some() { "-s" } else { "-a" },
            "-m",
            name,
            name,
            commit,
        ]);
        git(&self.work, &args)?;
        git(&self.work, &["push", "-q", "origin", name])?;
        Ok(())
    }

    /// Writes a commit object made by hand (a forgery) and pushes it as
    /// branch `branch`; returns its id.
    pub fn push_object(&self, data: &[u8], branch: &str) -> Result<String> {
        let path = self.work.join(".git/forged-object");
        std::fs::write(&path, data)?;
        let id = git(
            &self.work,
            &[
                "hash-object",
                "-t",
                "commit",
                "-w",
                path.to_str().expect("utf-8"),
            ],
        )?;
        let id = id.trim().to_string();
        git(
            &self.work,
            &["push", "-q", "origin", &format!("{id}:refs/heads/{branch}")],
        )?;
        Ok(id)
    }

    /// The raw data of an object in the work repository.
    pub fn object(&self, kind: &str, id: &str) -> Result<Vec<u8>> {
        let out = Command::new("git")
            .current_dir(&self.work)
            .args(["cat-file", kind, id])
            .output()?;
        if !out.status.success() {
            bail!(
                "git cat-file {kind} {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    }

    pub fn tag(&self, name: &str) -> Result<()> {
        git(&self.work, &["tag", name])?;
        git(&self.work, &["push", "-q", "origin", name])?;
        Ok(())
    }
}

impl GitServer {
    /// Stops serving (a Git outage); the repositories stay on disk.
    pub fn stop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// One emulated cluster and its agent.
pub struct ClusterHandle {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub emulator: Emulator,
    pub kubeconfig: PathBuf,
    /// The one-time join token `ferry cluster add` gave this cluster.
    pub join_token: String,
    /// Where its agent serves metrics and probes (with `WorldConfig::metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    pub agent: Option<(
        CancellationToken,
        tokio::task::JoinHandle<Result<(), ferry_agent::Error>>,
    )>,
}

/// How agents and the coordinator reach the fleet repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `git://` from `git daemon`.
    GitDaemon,
    /// `http://` from `git http-backend`.
    Http,
    /// `file://` (gix runs `git upload-pack` locally).
    File,
    /// A plain local path.
    Path,
    /// `https://` from `git http-backend` behind basic auth, with its own CA;
    /// agents get credentials and the CA in a Git secret directory.
    HttpsAuth,
    /// `ssh://` from OpenSSH `sshd`; agents get a key and known_hosts.
    Ssh,
}

/// The basic-auth credentials of [`Transport::HttpsAuth`].
pub const GIT_USER: &str = "ferry-bot";
pub const GIT_PASSWORD: &str = "s3cret-token";
/// A bearer token [`Transport::HttpsAuth`] accepts too.
pub const GIT_BEARER: &str = "bearer-s3cret";

/// Tunables of a world.
#[derive(Clone, Debug)]
pub struct WorldConfig {
    pub transport: Transport,
    pub path_template: String,
    /// How long emulated workloads take to become available.
    pub ready_delay: Duration,
    /// The agents' drift check interval.
    pub resync: Duration,
    /// How long agent certificates live.
    pub cert_lifetime: Duration,
    /// How long a new CRD takes to be Established in the emulators.
    pub crd_establish_delay: Duration,
    /// The coordinator's live event buffer per watcher.
    pub event_buffer: usize,
    /// The coordinator reads the repository where agents do, with the
    /// agents' Git secret as its own credentials (`--git-secret-dir`),
    /// instead of over git:// from the same server.
    pub coordinator_uses_git_secret: bool,
    /// The coordinator and agents serve `/metrics`, `/healthz`, `/readyz`.
    pub metrics: bool,
    /// The coordinator checks pinned commits against these keys.
    pub coordinator_verify_keys: Option<PathBuf>,
    /// Every agent checks commits against these keys.
    pub agent_verify_keys: Option<PathBuf>,
    /// A PostgreSQL DSN the coordinator (and any replica) keeps state in,
    /// instead of SQLite in its data dir.
    pub store: Option<String>,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            transport: Transport::GitDaemon,
            path_template: ferry_proto::DEFAULT_PATH_TEMPLATE.into(),
            ready_delay: Duration::from_millis(200),
            resync: Duration::from_secs(5),
            cert_lifetime: Duration::from_secs(30 * 86_400),
            crd_establish_delay: Duration::ZERO,
            event_buffer: 1024,
            coordinator_uses_git_secret: false,
            metrics: false,
            coordinator_verify_keys: None,
            agent_verify_keys: None,
            store: None,
        }
    }
}

pub struct World {
    pub dir: PathBuf,
    pub git: GitServer,
    /// The coordinator's CA (from its data dir) and bootstrap admin token.
    pub ca_file: PathBuf,
    pub admin_token: String,
    /// The repository URL the coordinator hands to agents.
    pub repo_url: String,
    /// Keeps the http(s):// Git server alive as long as the world.
    _http: Option<crate::githttp::HttpGit>,
    /// Keeps the ssh:// Git server alive as long as the world.
    _ssh: Option<crate::sshgit::SshGit>,
    /// The agents' Git secret directory (`--git-secret-dir`), if any.
    pub git_secret: Option<PathBuf>,
    pub coordinator: Option<Coordinator>,
    pub coordinator_addr: SocketAddr,
    pub clusters: Vec<ClusterHandle>,
    pub cfg: WorldConfig,
    /// Other coordinator replicas agents may fail over to (after the
    /// world's own, in their `--coordinator` list).
    pub replicas: Vec<SocketAddr>,
}

impl World {
    /// A git server, a PKI and a coordinator; no clusters yet.
    pub async fn start(dir: &Path, cfg: WorldConfig) -> Result<World> {
        crate::harness::init_crypto();
        let git = GitServer::start(&dir.join("git"))?;
        let mut http = None;
        let mut ssh = None;
        let mut git_secret = None;
        let secret_dir = dir.join("git-secret");
        let repo_url = match cfg.transport {
            Transport::GitDaemon => git.url.clone(),
            Transport::Http => {
                let h = crate::githttp::HttpGit::start(
                    git.bare.parent().expect("served/").to_path_buf(),
                )
                .await?;
                let url = format!("{}/fleet.git", h.base);
                http = Some(h);
                url
            }
            Transport::File => format!("file://{}", git.bare.display()),
            Transport::Path => git.bare.display().to_string(),
            Transport::HttpsAuth => {
                let h = crate::githttp::HttpGit::start_with(
                    git.bare.parent().expect("served/").to_path_buf(),
                    crate::githttp::HttpGitOptions {
                        tls: true,
                        basic: Some((GIT_USER.into(), GIT_PASSWORD.into())),
                        bearer: Some(GIT_BEARER.into()),
                    },
                )
                .await?;
                git_secret = Some(crate::sshgit::write_secret(
                    &secret_dir,
                    &[
                        ("username", GIT_USER.as_bytes()),
                        ("password", GIT_PASSWORD.as_bytes()),
                        ("ca.crt", h.ca_pem.clone().unwrap_or_default().as_bytes()),
                    ],
                )?);
                let url = format!("{}/fleet.git", h.base);
                http = Some(h);
                url
            }
            Transport::Ssh => {
                let server = crate::sshgit::SshGit::start(&dir.join("sshd"))?;
                git_secret = Some(crate::sshgit::write_secret(
                    &secret_dir,
                    &[
                        ("identity", &server.client_key),
                        ("known_hosts", server.known_hosts.as_bytes()),
                    ],
                )?);
                let url = server.url(&git.bare);
                ssh = Some(server);
                url
            }
        };
        let mut world = World {
            dir: dir.to_path_buf(),
            git,
            ca_file: dir.join("coordinator").join("ca.pem"),
            admin_token: String::new(),
            repo_url,
            _http: http,
            _ssh: ssh,
            git_secret,
            coordinator: None,
            coordinator_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            clusters: vec![],
            cfg,
            replicas: vec![],
        };
        world.start_coordinator().await?;
        world.admin_token = std::fs::read_to_string(
            world
                .dir
                .join("coordinator")
                .join(ferry_coordinator::server::ADMIN_TOKEN_FILE),
        )?
        .trim()
        .to_string();
        Ok(world)
    }

    fn coordinator_config(&self) -> CoordinatorConfig {
        let mut cfg = CoordinatorConfig::new(
            self.coordinator_addr,
            self.dir.join("coordinator"),
            self.repo_url.clone(),
        );
        cfg.path_template = self.cfg.path_template.clone();
        if self.cfg.coordinator_uses_git_secret {
            cfg.git_auth.secret_dir = self.git_secret.clone();
        } else if self.repo_url != self.git.url {
            // The coordinator resolves refs over git:// whatever agents use.
            cfg.resolve_url = Some(self.git.url.clone());
        }
        cfg.cert_lifetime = self.cfg.cert_lifetime;
        cfg.event_buffer = self.cfg.event_buffer;
        if self.cfg.metrics {
            cfg.metrics_listen = Some(([127, 0, 0, 1], 0).into());
        }
        cfg.verify_keys = self.cfg.coordinator_verify_keys.clone();
        cfg.store = self.cfg.store.clone();
        cfg
    }

    /// Starts another coordinator on the same database (the world's store
    /// must be PostgreSQL) with the same CA, in a data dir of its own, on a
    /// port of its own: a second replica.
    pub async fn start_replica(&self, name: &str) -> Result<Coordinator> {
        anyhow::ensure!(
            self.cfg.store.is_some(),
            "replicas share a PostgreSQL store"
        );
        let ca = self.dir.join(format!("{name}-ca"));
        std::fs::create_dir_all(&ca)?;
        let primary = self.dir.join("coordinator");
        std::fs::copy(primary.join("ca.pem"), ca.join("tls.crt"))?;
        std::fs::copy(primary.join("ca-key.pem"), ca.join("tls.key"))?;
        let mut cfg = self.coordinator_config();
        cfg.listen = ([127, 0, 0, 1], 0).into();
        cfg.data_dir = self.dir.join(name);
        cfg.ca_dir = Some(ca);
        Ok(Coordinator::start(cfg).await?)
    }

    /// Where the coordinator serves metrics and probes, if it does.
    pub fn coordinator_metrics(&self) -> Option<std::net::SocketAddr> {
        self.coordinator.as_ref().and_then(|c| c.metrics_addr)
    }

    /// (Re)starts the coordinator on its data dir, on the same port as before.
    pub async fn start_coordinator(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let c = loop {
            match Coordinator::start(self.coordinator_config()).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "coordinator port busy; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.coordinator_addr = c.addr;
        self.coordinator = Some(c);
        Ok(())
    }

    /// Stops the world's coordinator and makes `replica` (another on the
    /// same database) the world's coordinator from now on: operators'
    /// commands go to it.
    pub async fn fail_over_to(&mut self, replica: Coordinator) -> Result<()> {
        self.stop_coordinator().await?;
        self.coordinator_addr = replica.addr;
        self.coordinator = Some(replica);
        Ok(())
    }

    /// Stops the coordinator: its sessions end and agents start reconnecting.
    pub async fn stop_coordinator(&mut self) -> Result<()> {
        if let Some(c) = self.coordinator.take() {
            c.stop(Duration::from_secs(5)).await?;
        }
        Ok(())
    }

    pub fn addr(&self) -> String {
        format!("https://{}", self.coordinator_addr)
    }

    /// Dial settings of operators: verify the coordinator; no client certificate.
    pub fn operator_dial(&self) -> DialConfig {
        DialConfig {
            addr: self.addr(),
            ca: Some(self.ca_file.clone()),
            ..DialConfig::default()
        }
    }

    /// The `ferry` CLI's global flags for this world (as the bootstrap admin).
    pub fn cli_flags(&self) -> Vec<String> {
        vec![
            "--addr".into(),
            self.addr(),
            "--ca".into(),
            self.ca_file.display().to_string(),
            "--token".into(),
            self.admin_token.clone(),
        ]
    }

    /// Runs a `ferry` CLI command against this world; returns its output.
    pub async fn ferry(&self, args: &[&str]) -> Result<String> {
        let mut argv: Vec<String> = vec!["ferry".into()];
        argv.extend(self.cli_flags());
        argv.extend(args.iter().map(|s| s.to_string()));
        let parsed = <ferry_coordinator::cli::Args as clap::Parser>::try_parse_from(argv)?;
        ferry_coordinator::cli::execute(parsed).await
    }

    /// Runs a `ferry` CLI command acting with `token` (not the admin's).
    pub async fn ferry_as(&self, token: &str, args: &[&str]) -> Result<String> {
        let mut argv: Vec<String> = vec!["ferry".into()];
        let mut flags = self.cli_flags();
        let at = flags
            .iter()
            .position(|f| f == "--token")
            .expect("has a token")
            + 1;
        flags[at] = token.to_string();
        argv.extend(flags);
        argv.extend(args.iter().map(|s| s.to_string()));
        let parsed = <ferry_coordinator::cli::Args as clap::Parser>::try_parse_from(argv)?;
        ferry_coordinator::cli::execute(parsed).await
    }

    /// An Admin client acting with `token`.
    pub async fn admin_as(&self, token: &str) -> Result<ferry_coordinator::cli::Admin> {
        let channel = self.operator_dial().endpoint()?.connect().await?;
        Ok(AdminClient::with_interceptor(
            channel,
            ferry_proto::Bearer::new(token)?,
        ))
    }

    /// An Admin client acting as the bootstrap admin.
    pub async fn admin(&self) -> Result<ferry_coordinator::cli::Admin> {
        self.admin_as(&self.admin_token).await
    }

    /// Adds an emulated cluster and starts its agent.
    pub async fn add_cluster(&mut self, name: &str, labels: &[(&str, &str)]) -> Result<usize> {
        let i = self.add_cluster_without_agent(name, labels).await?;
        self.start_agent(i);
        Ok(i)
    }

    /// Adds an emulated cluster (and its join token); starts no agent.
    pub async fn add_cluster_without_agent(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<usize> {
        let emulator = Emulator::start(EmulatorConfig {
            controllers: Controllers {
                ready_delay: self.cfg.ready_delay,
                crd_establish_delay: self.cfg.crd_establish_delay,
            },
            ..EmulatorConfig::default()
        })
        .await?;
        let kubeconfig = self.dir.join(format!("{name}.kubeconfig"));
        emulator.write_kubeconfig(&kubeconfig)?;
        let added = self
            .admin()
            .await?
            .add_cluster(ferry_proto::v1::AddClusterRequest {
                name: name.to_string(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                token_ttl_seconds: 600,
            })
            .await?
            .into_inner();
        self.clusters.push(ClusterHandle {
            join_token: added.join_token,
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            emulator,
            kubeconfig,
            metrics: if self.cfg.metrics {
                Some(([127, 0, 0, 1], free_port()?).into())
            } else {
                None
            },
            agent: None,
        });
        Ok(self.clusters.len() - 1)
    }

    /// Replaces cluster `name`'s API server with an empty one on the same
    /// address (a cluster rebuilt from scratch). With `new_ca` the new server
    /// has a certificate from a new CA; `rewrite_kubeconfig` then decides
    /// whether the agent's kubeconfig file learns it.
    pub async fn rebuild_cluster(
        &mut self,
        name: &str,
        new_ca: bool,
        rewrite_kubeconfig: bool,
    ) -> Result<()> {
        let i = self.index(name);
        let old = &self.clusters[i].emulator;
        let (addr, ca, token) = (old.addr(), old.ca(), old.token().to_string());
        old.stop();
        let emulator = Emulator::start(EmulatorConfig {
            listen: addr,
            ca: if new_ca { None } else { ca },
            // The kubeconfig's credentials stay valid across the rebuild.
            token: Some(token),
            controllers: Controllers {
                ready_delay: self.cfg.ready_delay,
                crd_establish_delay: self.cfg.crd_establish_delay,
            },
            ..EmulatorConfig::default()
        })
        .await?;
        if rewrite_kubeconfig {
            emulator.write_kubeconfig(&self.clusters[i].kubeconfig)?;
        }
        self.clusters[i].emulator = emulator;
        Ok(())
    }

    /// The `ferry-agent` command line for cluster `i`, as an operator would
    /// run it (the same settings [`World::agent_config`] gives in-process
    /// agents).
    pub fn agent_args(&self, i: usize) -> Vec<String> {
        let cfg = self.agent_config(i);
        let mut args = vec![
            "--coordinator".to_string(),
            cfg.dial.addr.clone(),
            "--cluster".into(),
            cfg.cluster.clone(),
            "--ca".into(),
            self.ca_file.display().to_string(),
            "--kubeconfig".into(),
            self.clusters[i].kubeconfig.display().to_string(),
            "--cache-dir".into(),
            cfg.cache_dir.display().to_string(),
            "--namespace".into(),
            cfg.namespace.clone(),
            "--resync-seconds".into(),
            cfg.resync.as_secs().max(1).to_string(),
            "--kustomize".into(),
            cfg.kustomize.join(" "),
            "--helm".into(),
            cfg.helm.join(" "),
        ];
        if let Some(t) = &cfg.join_token {
            args.extend(["--join-token".into(), t.clone()]);
        }
        if let Some(d) = &cfg.git_auth.secret_dir {
            args.extend(["--git-secret-dir".into(), d.display().to_string()]);
        }
        for (k, v) in &cfg.labels {
            args.extend(["--label".into(), format!("{k}={v}")]);
        }
        args
    }

    pub fn agent_config(&self, i: usize) -> ferry_agent::Config {
        let c = &self.clusters[i];
        let mut addr = self.addr();
        for r in &self.replicas {
            addr.push_str(&format!(",https://{r}"));
        }
        let dial = DialConfig {
            addr,
            ca: Some(self.ca_file.clone()),
            ..DialConfig::default()
        };
        let mut cfg =
            ferry_agent::Config::new(c.name.clone(), dial, self.dir.join("cache").join(&c.name));
        cfg.labels = c.labels.clone();
        cfg.kubeconfig = Some(c.kubeconfig.clone());
        cfg.resync = self.cfg.resync;
        cfg.health_poll = Duration::from_millis(200);
        cfg.min_backoff = Duration::from_millis(100);
        cfg.max_backoff = Duration::from_secs(2);
        cfg.join_token = Some(c.join_token.clone());
        cfg.git_auth.secret_dir = self.git_secret.clone();
        cfg.metrics_listen = c.metrics;
        cfg.verify_keys = self.cfg.agent_verify_keys.clone();
        cfg.kustomize = vec![
            crate::harness::kubectl().display().to_string(),
            "kustomize".into(),
        ];
        cfg.helm = crate::harness::helm_template();
        cfg
    }

    pub fn start_agent(&mut self, i: usize) {
        let cfg = self.agent_config(i);
        self.start_agent_with(i, cfg);
    }

    /// Starts cluster `i`'s agent with a config of the caller's.
    pub fn start_agent_with(&mut self, i: usize, cfg: ferry_agent::Config) {
        let token = CancellationToken::new();
        let task = tokio::spawn(ferry_agent::run(cfg, token.clone()));
        self.clusters[i].agent = Some((token, task));
    }

    /// Stops an agent and waits for it to end.
    pub async fn stop_agent(&mut self, i: usize) -> Result<()> {
        if let Some((token, task)) = self.clusters[i].agent.take() {
            token.cancel();
            task.await??;
        }
        Ok(())
    }

    pub fn index(&self, name: &str) -> usize {
        self.clusters
            .iter()
            .position(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    pub fn emulator(&self, name: &str) -> &Emulator {
        &self.clusters[self.index(name)].emulator
    }

    pub async fn cluster(&self, name: &str) -> Result<Cluster> {
        Ok(self
            .admin()
            .await?
            .get_cluster(GetClusterRequest { name: name.into() })
            .await?
            .into_inner())
    }

    /// Waits until every named cluster is known to the coordinator and connected.
    pub async fn wait_connected(&self, names: &[&str]) {
        for name in names {
            crate::harness::eventually(&format!("cluster {name} connected"), || async {
                self.cluster(name).await.ok().filter(|c| c.connected)
            })
            .await;
        }
    }

    /// Waits until a cluster reports that it failed to apply `commit`.
    pub async fn wait_failed_at(&self, name: &str, commit: &str) -> StatusReport {
        crate::harness::eventually(&format!("cluster {name} Failed at {commit}"), || async {
            let s = self.cluster(name).await.ok()?.status?;
            (s.target_commit == commit && s.phase == Phase::Failed as i32).then_some(s)
        })
        .await
    }

    /// Waits until a cluster reports `commit` applied, Synced and Healthy.
    pub async fn wait_healthy_at(&self, name: &str, commit: &str) -> Cluster {
        crate::harness::eventually(&format!("cluster {name} healthy at {commit}"), || async {
            let c = self.cluster(name).await.ok()?;
            let s = c.status.as_ref()?;
            (s.applied_commit == commit
                && s.phase == Phase::Synced as i32
                && s.health == Health::Healthy as i32)
                .then_some(c)
        })
        .await
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &self.clusters {
            if let Some((t, _)) = &c.agent {
                t.cancel();
            }
        }
    }
}
