//! `ferry-sandbox`: Ferry's main job on embedded defaults. A fleet repository
//! served by a real `git daemon`, a coordinator with mTLS on a SQLite data
//! dir, seven emulated clusters with their agents (one on a ship, reading
//! a local Git mirror fed by signed bundles), and a commit moved through
//! them in steps, canaries first, with a live view. `--ha`: two
//! coordinators on a throwaway PostgreSQL, agents that know both, and the
//! one driving rollouts stopped before the rollout, which the other takes
//! over.

use anyhow::{Context, Result, bail};
use clap::Parser;
use ferry_integration::world::{GitServer, World, WorldConfig};
use ferry_proto::v1::{GetRolloutRequest, Health, ListClustersRequest, Phase};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Run a local Ferry fleet: coordinator, Git server, emulated clusters, agents.
#[derive(Parser, Debug)]
#[command(name = "ferry-sandbox", version)]
struct Args {
    /// Exit 0 once every cluster runs the final commit and is Healthy
    /// (non-zero with a reason otherwise).
    #[arg(long)]
    exit_when_done: bool,
    /// Where to keep the sandbox's files (default: a fresh temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 180)]
    timeout_seconds: u64,
    /// Run every command printed for you to try, then exit (non-zero,
    /// naming the first that fails).
    #[arg(long)]
    run_suggestions: bool,
    /// High availability: two coordinators share a throwaway PostgreSQL
    /// (needs PostgreSQL's programs: Debian's `postgresql`), agents know
    /// both, and the one driving rollouts is stopped before the rollout.
    #[arg(long)]
    ha: bool,
}

const CLUSTERS: [(&str, &str, &str); 7] = [
    ("canary-eu", "canary", "eu"),
    ("canary-us", "canary", "us"),
    ("eu-1", "main", "eu"),
    ("eu-2", "main", "eu"),
    ("us-1", "main", "us"),
    ("us-2", "main", "us"),
    // On a ship: no route to the Git server, a mirror aboard fed by bundles.
    ("ship-1", "main", "sea"),
];

fn manifests(cluster: &str, region: &str, version: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: shop-config
  namespace: shop
data:
  cluster: {cluster}
  region: {region}
  release: "{version}"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: storefront
  namespace: shop
  labels: {{app: storefront}}
spec:
  replicas: 3
  selector:
    matchLabels: {{app: storefront}}
  template:
    metadata:
      labels: {{app: storefront}}
    spec:
      containers:
      - name: storefront
        image: example.com/storefront:{version}
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: storefront
  namespace: shop
spec:
  selector: {{app: storefront}}
  ports:
  - port: 80
    targetPort: 8080
"#
    )
}

/// A release signing key made with `ssh-keygen`, and the `allowed_signers`
/// directory the coordinator and every agent trust; `None` (commits go
/// unsigned, nothing is checked) where there is no `ssh-keygen`.
fn signing_key(dir: &Path) -> Option<(Vec<String>, PathBuf)> {
    let key = dir.join("release-key");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "release", "-f"])
        .arg(&key)
        .output()
        .ok()?;
    if !made.status.success() {
        return None;
    }
    let public = std::fs::read_to_string(key.with_extension("pub")).ok()?;
    let keys = dir.join("trusted-keys");
    std::fs::create_dir_all(&keys).ok()?;
    std::fs::write(
        keys.join("allowed_signers"),
        format!("release@example.com {}\n", public.trim()),
    )
    .ok()?;
    let config = vec![
        "-c".to_string(),
        "gpg.format=ssh".to_string(),
        "-c".to_string(),
        format!("user.signingkey={}", key.display()),
    ];
    Some((config, keys))
}

fn commit_all(
    world: &World,
    message: &str,
    version: &str,
    signing: Option<&[String]>,
) -> Result<String> {
    let files: Vec<(String, String)> = CLUSTERS
        .iter()
        .map(|(c, _, region)| {
            (
                format!("clusters/{c}/shop.yaml"),
                manifests(c, region, version),
            )
        })
        .collect();
    let refs: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    match signing {
        Some(config) => world.git.commit_signed(message, &refs, config),
        None => world.git.commit(message, &refs),
    }
}

struct View {
    tty: bool,
    last: String,
    log: Vec<String>,
}

impl View {
    fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        if !self.tty {
            println!("{line}");
        }
        self.log.push(line);
    }

    fn draw_rollout(&mut self, status: &str) {
        if status == self.last {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\x1b[2J\x1b[H");
            for l in &self.log {
                let _ = writeln!(out, "{l}");
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "{status}");
        let _ = out.flush();
        self.last = status.to_string();
    }

    async fn draw(&mut self, world: &World, target: &str) -> Result<bool> {
        let clusters = world
            .admin()
            .await?
            .list_clusters(ListClustersRequest::default())
            .await?
            .into_inner()
            .clusters;
        let mut table = format!(
            "{:<10} {:<7} {:<6} {:<9} {:<9} {:<8} {:<11} {}\n",
            "CLUSTER", "RING", "REGION", "PINNED", "APPLIED", "PHASE", "HEALTH", "MESSAGE"
        );
        let mut done = clusters.len() == CLUSTERS.len();
        for c in &clusters {
            let s = c.status.clone().unwrap_or_default();
            let short = |x: &str| {
                if x.is_empty() {
                    "-".to_string()
                } else {
                    x[..8].to_string()
                }
            };
            let phase = Phase::try_from(s.phase).unwrap_or_default();
            let health = Health::try_from(s.health).unwrap_or_default();
            done &=
                s.applied_commit == target && health == Health::Healthy && phase == Phase::Synced;
            table.push_str(&format!(
                "{:<10} {:<7} {:<6} {:<9} {:<9} {:<8} {:<11} {}\n",
                c.name,
                c.labels.get("ring").map_or("-", String::as_str),
                c.labels.get("region").map_or("-", String::as_str),
                short(&c.pinned_commit),
                short(&s.applied_commit),
                phase.to_string(),
                health.to_string(),
                s.message,
            ));
        }
        if table != self.last {
            let mut out = std::io::stdout().lock();
            if self.tty {
                write!(out, "\x1b[2J\x1b[H")?;
                for l in &self.log {
                    writeln!(out, "{l}")?;
                }
                writeln!(out)?;
            }
            write!(out, "{table}")?;
            if !self.tty {
                writeln!(out)?;
            }
            out.flush()?;
            self.last = table;
        }
        Ok(done)
    }
}

/// The ship: a site whose mirror is fed only by signed bundles.
struct Ship {
    mirror: GitServer,
    key: PathBuf,
    /// The last bundle carried aboard, and its id.
    last: PathBuf,
    last_id: String,
    /// Commits the mirror holds (by the bundles imported).
    held: Vec<String>,
}

impl Ship {
    async fn start(world: &World, dir: &Path) -> Result<Ship> {
        let mirror = GitServer::start(&dir.join("ship"))?;
        let key = dir.join("bundle-signing.key");
        if !key.exists() {
            world
                .ferry(&["bundle", "keygen", "--out", &key.display().to_string()])
                .await?;
        }
        world
            .ferry(&[
                "site",
                "add",
                "ship",
                "--mirror",
                &mirror.url,
                "--selector",
                "site=ship",
            ])
            .await?;
        let mut ship = Ship {
            mirror,
            key,
            last: PathBuf::new(),
            last_id: String::new(),
            held: vec![],
        };
        ship.carry(world, dir).await?;
        Ok(ship)
    }

    fn fed(&self, commit: &str) -> bool {
        self.held.iter().any(|c| c == commit)
    }

    /// Makes the next bundle ashore and imports it aboard.
    async fn carry(&mut self, world: &World, dir: &Path) -> Result<String> {
        let n = self.held.len() + 1;
        let file = dir.join(format!("ship-{n}.ferry"));
        let (repo, key, out) = (
            world.git.bare.display().to_string(),
            self.key.display().to_string(),
            file.display().to_string(),
        );
        let last = self.last.display().to_string();
        let mut create = vec![
            "bundle", "create", "--repo", &repo, "--ref", "main", "--key", &key, "--out", &out,
        ];
        if n > 1 {
            create.extend(["--since-bundle", last.as_str()]);
        }
        let made = world.ferry(&create).await?;
        self.last_id = made
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string();
        let trust = format!("{key}.pub");
        let said = world
            .ferry(&[
                "bundle",
                "import",
                &out,
                "--into",
                &self.mirror.bare.display().to_string(),
                "--trust",
                &trust,
                "--site",
                "ship",
            ])
            .await?;
        let head = std::process::Command::new("git")
            .arg("-C")
            .arg(&self.mirror.bare)
            .args(["rev-parse", "main"])
            .output()?;
        self.held
            .push(String::from_utf8_lossy(&head.stdout).trim().to_string());
        self.last = file;
        Ok(said)
    }
}

async fn pin(world: &World, clusters: &[&str], reference: &str, reason: &str) -> Result<()> {
    let mut args = vec!["pin"];
    args.extend(clusters);
    args.extend(["--commit", reference, "--reason", reason]);
    world.ferry(&args).await?;
    Ok(())
}

/// Redraws until the named clusters run `commit` healthily.
async fn settle(
    world: &World,
    view: &mut View,
    names: &[&str],
    commit: &str,
    deadline: Instant,
) -> Result<()> {
    loop {
        view.draw(world, commit).await?;
        let mut ok = true;
        for n in names {
            let c = world.cluster(n).await?;
            let s = c.status.unwrap_or_default();
            if s.phase == Phase::Failed as i32 {
                bail!("cluster {n} failed at {}: {}", &commit[..8], s.message);
            }
            ok &= s.applied_commit == commit
                && s.health == Health::Healthy as i32
                && s.phase == Phase::Synced as i32;
        }
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "timed out waiting for {names:?} to run {} healthily",
                &commit[..8]
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(args).await {
        eprintln!("ferry-sandbox: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("ferry-sandbox-")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    // Commits are signed; the coordinator and every agent check them.
    let signing = signing_key(&dir);
    let cfg = WorldConfig {
        ready_delay: Duration::from_millis(1500),
        metrics: true,
        coordinator_verify_keys: signing.as_ref().map(|(_, keys)| keys.clone()),
        agent_verify_keys: signing.as_ref().map(|(_, keys)| keys.clone()),
        ..WorldConfig::default()
    };
    let signing = signing.map(|(config, _)| config);
    let mut cfg = cfg;
    // --ha: PostgreSQL of its own, kept until the sandbox ends.
    let pg = if args.ha {
        let pg = ferry_integration::postgres::Scratch::start().context(
            "--ha runs PostgreSQL: install its programs (Debian: apt-get install postgresql)",
        )?;
        cfg.store = Some(pg.create("ferry").await?);
        Some(pg)
    } else {
        None
    };
    let mut world = World::start(&dir, cfg).await?;
    let mut view = View {
        tty: std::io::stdout().is_terminal(),
        last: String::new(),
        log: vec![],
    };
    view.say(format!("Ferry sandbox in {}", dir.display()));
    view.say(format!("  git daemon serving {}", world.git.url));
    let mut standby = None;
    if let Some(pg) = &pg {
        let b = world.start_replica("coordinator-b").await?;
        world.replicas.push(b.addr);
        view.say(format!(
            "  coordinators A on {} and B on https://{} (one CA, mTLS, tokens), sharing PostgreSQL on 127.0.0.1:{}; A holds the lease to drive rollouts; agents know both",
            world.addr(),
            b.addr,
            pg.port()
        ));
        standby = Some(b);
    } else {
        view.say(format!(
            "  coordinator (own CA, mTLS, tokens, SQLite) on {}",
            world.addr()
        ));
    }

    let first = commit_all(
        &world,
        "storefront 1.0 everywhere",
        "1.0",
        signing.as_deref(),
    )?;
    view.say(format!("  committed {} (storefront 1.0)", &first[..8]));
    view.say(if signing.is_some() {
        "  commits are signed (ssh-keygen); the coordinator and every agent verify them"
    } else {
        "  no ssh-keygen here: commits are unsigned and nothing verifies them"
    });
    for (name, ring, region) in CLUSTERS {
        let mut labels = vec![("ring", ring), ("region", region)];
        if region == "sea" {
            labels.push(("site", "ship"));
        }
        world.add_cluster(name, &labels).await?;
    }
    let all: Vec<&str> = CLUSTERS.iter().map(|c| c.0).collect();
    view.say(format!(
        "  started {} emulated clusters with agents",
        all.len()
    ));
    world.wait_connected(&all).await;
    // The ship's Git mirror, its own git daemon; commits reach it only in
    // signed bundle files.
    let mut ship = Ship::start(&world, &dir).await?;
    view.say(format!(
        "  site ship: ship-1 reads the mirror {} aboard; bundle {} carried {} there",
        ship.mirror.url,
        ship.last_id,
        &first[..8]
    ));

    view.say(format!("step 1: pin every cluster to {}", &first[..8]));
    pin(&world, &all, &first, "sandbox: initial release").await?;
    settle(&world, &mut view, &all, &first, deadline).await?;

    if let Some(b) = standby.take() {
        let on_b = all.iter().filter(|c| b.hub.connected(c)).count();
        view.say(format!(
            "step 1b: coordinator A stops ({} agents were on A, {on_b} on B); its agents move to B by themselves, and B takes over the rollouts lease once A's runs out",
            all.len() - on_b
        ));
        let stopped = Instant::now();
        world.fail_over_to(b).await?;
        let hub = world.coordinator.as_ref().expect("B serves").hub.clone();
        ferry_integration::harness::eventually("every agent on B", || async {
            all.iter().all(|c| hub.connected(c)).then_some(())
        })
        .await;
        view.say(format!(
            "  every agent is on B after {:.1}s",
            stopped.elapsed().as_secs_f64()
        ));
    }

    let second = commit_all(&world, "storefront 2.0", "2.0", signing.as_deref())?;
    view.say(format!(
        "step 2: committed {} (storefront 2.0); first, what it would change (each agent dry-runs it in its own cluster; nothing is written):",
        &second[..8]
    ));
    let canaries = world
        .ferry(&["diff", "--selector", "ring=canary", "--commit", "main"])
        .await?;
    let rest = world
        .ferry(&[
            "diff",
            "--selector",
            "ring!=canary",
            "--commit",
            "main",
            "--summary",
        ])
        .await?;
    println!("\n$ ferry diff --selector ring=canary --commit main\n{canaries}");
    println!("$ ferry diff --selector 'ring!=canary' --commit main --summary\n{rest}");
    view.say("step 3: a staged rollout: canaries, then eu, then the rest, 3s bake each");
    let rollout = [
        "rollout",
        "start",
        "--commit",
        "main",
        "--wave",
        "ring=canary",
        "--wave",
        "region=eu",
        "--wave",
        "100%",
        "--bake",
        "3s",
        "--auto-rollback",
    ];
    let asked = Instant::now();
    // --ha: the command waits (relayed through the database) until B has
    // taken the lease over, then B carries it out.
    let started = world.ferry(&rollout).await?;
    if args.ha {
        view.say(format!(
            "  B took over driving rollouts and started it ({:.1}s after asking; A's lease ran out)",
            asked.elapsed().as_secs_f64()
        ));
    }
    let id = started
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string();
    let mut waited_since: Option<Instant> = None;
    loop {
        let status = world.ferry(&["rollout", "status", &id]).await?;
        view.draw_rollout(&status);
        // The ship's wave waits for its mirror; a while later the next
        // bundle crosses and is imported, and the wave moves on.
        if status.contains("waiting for mirror ship") {
            let since = *waited_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(3) && !ship.fed(&second) {
                let said = ship.carry(&world, &dir).await?;
                view.say(format!(
                    "  the ship's wave waited for its mirror; bundle {} crossed and was imported:",
                    ship.last_id
                ));
                for l in said.lines() {
                    view.say(format!("    {l}"));
                }
            }
        }
        let phase = world
            .admin()
            .await?
            .get_rollout(GetRolloutRequest { id: id.clone() })
            .await?
            .into_inner()
            .phase;
        use ferry_proto::v1::RolloutPhase;
        match RolloutPhase::try_from(phase).unwrap_or_default() {
            RolloutPhase::Succeeded => break,
            RolloutPhase::Running | RolloutPhase::Paused | RolloutPhase::AwaitingApproval => {}
            other => bail!("rollout {id} ended {other}:\n{status}"),
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for rollout {id}:\n{status}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    settle(&world, &mut view, &all, &second, deadline).await?;
    println!(
        "\nRollout {id} succeeded: every cluster runs {} and is Healthy.",
        &second[..8]
    );
    println!("\n{}", world.ferry(&["history", "--limit", "8"]).await?);

    if args.exit_when_done && !args.run_suggestions {
        world.stop_coordinator().await?;
        return Ok(());
    }
    let flags = world.cli_flags();
    let env = vec![
        ("FERRY_ADDR".to_string(), flags[1].clone()),
        ("FERRY_CA".to_string(), flags[3].clone()),
        (
            "FERRY_TOKEN_FILE".to_string(),
            dir.join("coordinator")
                .join(ferry_coordinator::server::ADMIN_TOKEN_FILE)
                .display()
                .to_string(),
        ),
    ];
    let tries = suggestions(&world, &dir, &id, &first, &second);
    println!("\nThe sandbox keeps running (Ctrl-C stops it). Try, in another terminal:\n");
    println!(
        "  export {}",
        env.iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for t in &tries {
        println!("  {}", t.shown());
    }
    if args.run_suggestions {
        println!();
        for t in &tries {
            t.run(&env).await?;
        }
        println!("\nEvery suggested command ran.");
        world.stop_coordinator().await?;
        return Ok(());
    }
    tokio::signal::ctrl_c().await?;
    world.stop_coordinator().await?;
    Ok(())
}

/// A program a suggested command runs.
#[derive(Clone, Copy)]
enum Program {
    /// `cargo run -q --bin ferry --`: the `ferry` next to this binary.
    Ferry,
    Kubectl,
    Git,
    Curl,
}

/// A command the sandbox suggests, kept as data so that what is printed is
/// exactly what `--run-suggestions` runs.
struct Suggestion {
    program: Program,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

fn suggest(program: Program, args: &[&str]) -> Suggestion {
    Suggestion {
        program,
        env: vec![],
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

fn suggestions(world: &World, dir: &Path, id: &str, first: &str, second: &str) -> Vec<Suggestion> {
    use Program::*;
    let mut kubectl = suggest(Kubectl, &["get", "all", "-n", "shop"]);
    kubectl.env.push((
        "KUBECONFIG".into(),
        dir.join("eu-1.kubeconfig").display().to_string(),
    ));
    let work = world.git.work.display().to_string();
    let eu1 = dir.join("eu-1.kubeconfig").display().to_string();
    let in_eu1 = |args: &[&str]| {
        let mut s = suggest(Kubectl, args);
        s.env.push(("KUBECONFIG".into(), eu1.clone()));
        s
    };
    let metrics = world
        .coordinator_metrics()
        .map(|a| format!("http://{a}/metrics"))
        .unwrap_or_default();
    vec![
        suggest(Ferry, &["clusters"]),
        suggest(Ferry, &["cluster", "show", "eu-1"]),
        suggest(Ferry, &["history"]),
        suggest(Ferry, &["rollout", "status", id]),
        suggest(Ferry, &["diff", "eu-1", "us-1", "--commit", &first[..8]]),
        suggest(Ferry, &["sites"]),
        suggest(Ferry, &["site", "show", "ship"]),
        suggest(
            Ferry,
            &[
                "rollout",
                "start",
                "--commit",
                &first[..8],
                "--wave",
                "ring=canary",
                "--wave",
                "100%",
                "--bake",
                "5s",
                "--auto-rollback",
            ],
        ),
        suggest(Ferry, &["rollout", "status", "--watch"]),
        suggest(
            Ferry,
            &[
                "pin",
                "eu-1",
                "--commit",
                &second[..8],
                "--reason",
                "eu-1 back on 2.0",
            ],
        ),
        kubectl,
        in_eu1(&["get", "events", "-n", "ferry-system"]),
        in_eu1(&[
            "get",
            "configmap",
            "ferry-agent-status",
            "-n",
            "ferry-system",
            "-o",
            "yaml",
        ]),
        suggest(Curl, &["-s", &metrics]),
        suggest(Git, &["-C", &work, "log", "--oneline"]),
    ]
}

impl Suggestion {
    fn shown(&self) -> String {
        let mut words: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        words.push(match self.program {
            Program::Ferry => "cargo run -q --bin ferry --".into(),
            Program::Kubectl => ferry_integration::harness::kubectl().display().to_string(),
            Program::Git => "git".into(),
            Program::Curl => "curl".into(),
        });
        words.extend(self.args.iter().map(|a| quote(a)));
        words.join(" ")
    }

    /// Runs it as a shell would (with the printed `export`), failing with
    /// the command and its output unless it exits 0.
    async fn run(&self, env: &[(String, String)]) -> Result<()> {
        let program: PathBuf = match self.program {
            Program::Ferry => std::env::current_exe()?.with_file_name("ferry"),
            Program::Kubectl => ferry_integration::harness::kubectl(),
            Program::Git => "git".into(),
            Program::Curl => "curl".into(),
        };
        println!("$ {}", self.shown());
        let out = tokio::process::Command::new(&program)
            .args(&self.args)
            .envs(env.iter().chain(&self.env).map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", program.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        print!("{stdout}");
        if !out.status.success() {
            bail!(
                "`{}` failed ({}):\n{stdout}{}",
                self.shown(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// A word as a POSIX shell reads it back.
fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:%,@+".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
