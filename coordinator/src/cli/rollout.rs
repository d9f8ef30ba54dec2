//! `ferry rollout …` and `ferry promote`: plans from flags or a YAML file,
//! status tables, and a live view driven by the server's event stream.
//!
//! The plan file format (`ferry rollout start -f plan.yaml`):
//!
//! ```yaml
//! ref: main                 # branch, tag or commit, resolved once at start
//! autoRollback: true        # pin moved clusters back if the rollout fails
//! defaults:                 # every wave, unless the wave says otherwise
//!   bake: 5m                # all of the wave Healthy at the target this long
//!   deadline: 10m           # a cluster not Healthy this long after its pin fails
//!   maxFailures: 0          # or "10%" of the wave
//!   offline: wait           # wait | skip | fail
//!   mirrorLag: wait         # a site's mirror lacks the commit: wait | skip | fail
//!   maxParallel: 0          # clusters moved at once; 0 = the whole wave
//!   approval: false         # wait for `ferry rollout approve` before the wave
//! waves:
//!   - name: canary
//!     selector: ring=canary # label selector
//!   - name: eu
//!     selector: region=eu
//!     approval: true
//!   - names: [us-1, us-2]   # explicit clusters
//!   - percent: 50           # half of the clusters still to go
//!   - count: 10             # ten of the clusters still to go
//! ```

use super::output::{ago, short, table};
use super::{Admin, status};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use ferry_proto::rollout::Offline;
use ferry_proto::v1::{
    ClusterNames, ControlRolloutRequest, GetRolloutRequest, Health, ListRolloutsRequest,
    OfflinePolicy, Rollout, RolloutClusterPhase, RolloutControl, RolloutPhase, RolloutPlan,
    StartRolloutRequest, WatchEventsRequest, WavePlan, WavePolicy, wave_plan,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Start a rollout from waves given as flags or a plan file.
    Start {
        /// Branch, tag, full or short commit.
        #[arg(long = "commit")]
        reference: Option<String>,
        /// A wave, in order: a label selector (ring=canary), a percentage
        /// (50%), a count (10) or names (names:a,b). Repeat for each wave.
        #[arg(long = "wave")]
        waves: Vec<String>,
        /// A YAML plan (see the README); flags given as well override it.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Pin the moved clusters back if the rollout fails.
        #[arg(long)]
        auto_rollback: bool,
        #[command(flatten)]
        ask: Ask,
    },
    /// Waves by clusters: pinned and applied commits, health, countdowns.
    Status {
        /// The rollout (default: the latest).
        id: Option<String>,
        /// Follow it live, from the server's event stream, until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Every rollout, newest first.
    List,
    /// Stop starting new pins (pins already made stay).
    Pause { id: String },
    /// Carry on a paused rollout from where it stopped.
    Resume { id: String },
    /// Stop for good; pins already made stay.
    Abort { id: String },
    /// Pin every cluster the rollout moved back to its previous commit.
    Rollback { id: String },
    /// Let a wave that waits for approval start.
    Approve { id: String },
}

/// Wave policy flags (for every wave of the plan).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct PolicyArgs {
    /// Every cluster of a wave Healthy at the target this long (30s, 5m, 1h).
    #[arg(long)]
    pub bake: Option<String>,
    /// A cluster not Healthy at the target this long after its pin fails.
    #[arg(long)]
    pub deadline: Option<String>,
    /// Failures a wave tolerates: a count (2) or a percentage (10%).
    #[arg(long)]
    pub max_failures: Option<String>,
    /// Offline clusters: wait, skip or fail.
    #[arg(long)]
    pub offline: Option<String>,
    /// Clusters whose site's mirror lacks the commit: wait, skip or fail.
    #[arg(long)]
    pub mirror_lag: Option<String>,
    /// Clusters of a wave moved at once (0: all).
    #[arg(long)]
    pub max_parallel: Option<u32>,
    /// Wait for `ferry rollout approve` before each wave.
    #[arg(long)]
    pub approval: bool,
}

/// "90", "30s", "5m", "1h", "30d" as seconds.
pub fn seconds(s: &str) -> Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration (30s, 5m, 1h)"))?;
    Ok(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("{s:?} is not a duration (30s, 5m, 1h)"),
    })
}

/// `wait`, `skip` or `fail` as the wire's enum.
fn offline(s: Option<&str>) -> Result<Option<i32>> {
    s.map(|s| {
        Offline::parse(s)
            .map(|o| OfflinePolicy::from(o) as i32)
            .map_err(|e| anyhow::anyhow!(e))
    })
    .transpose()
}

impl PolicyArgs {
    fn policy(&self) -> Result<WavePolicy> {
        Ok(WavePolicy {
            max_parallel: self.max_parallel,
            bake_seconds: self.bake.as_deref().map(seconds).transpose()?,
            deadline_seconds: self.deadline.as_deref().map(seconds).transpose()?,
            max_failures: self.max_failures.clone(),
            offline: offline(self.offline.as_deref())?,
            mirror_lag: offline(self.mirror_lag.as_deref())?,
            approval: self.approval.then_some(true),
        })
    }
}

fn wave_from_flag(s: &str) -> Result<WavePlan> {
    let select = if let Some(p) = s.strip_suffix('%') {
        wave_plan::Select::Percent(
            p.trim()
                .parse()
                .with_context(|| format!("wave {s:?}: bad percentage"))?,
        )
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        wave_plan::Select::Count(s.parse()?)
    } else if let Some(names) = s.strip_prefix("names:") {
        wave_plan::Select::Names(ClusterNames {
            names: names
                .split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
        })
    } else {
        ferry_proto::LabelSelector::parse(s).map_err(|e| anyhow::anyhow!("wave {s:?}: {e}"))?;
        wave_plan::Select::Labels(s.to_string())
    };
    Ok(WavePlan {
        name: String::new(),
        select: Some(select),
        policy: None,
    })
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

impl NumOrText {
    fn text(&self) -> String {
        match self {
            NumOrText::Num(n) => n.to_string(),
            NumOrText::Text(t) => t.clone(),
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyFile {
    bake: Option<NumOrText>,
    deadline: Option<NumOrText>,
    max_failures: Option<NumOrText>,
    offline: Option<String>,
    mirror_lag: Option<String>,
    max_parallel: Option<u32>,
    approval: Option<bool>,
}

impl PolicyFile {
    fn policy(&self) -> Result<WavePolicy> {
        Ok(WavePolicy {
            max_parallel: self.max_parallel,
            bake_seconds: self.bake.as_ref().map(|b| seconds(&b.text())).transpose()?,
            deadline_seconds: self
                .deadline
                .as_ref()
                .map(|b| seconds(&b.text()))
                .transpose()?,
            max_failures: self.max_failures.as_ref().map(NumOrText::text),
            offline: offline(self.offline.as_deref())?,
            mirror_lag: offline(self.mirror_lag.as_deref())?,
            approval: self.approval,
        })
    }
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WaveFile {
    name: Option<String>,
    selector: Option<String>,
    names: Option<Vec<String>>,
    count: Option<u32>,
    percent: Option<NumOrText>,
    bake: Option<NumOrText>,
    deadline: Option<NumOrText>,
    max_failures: Option<NumOrText>,
    offline: Option<String>,
    mirror_lag: Option<String>,
    max_parallel: Option<u32>,
    approval: Option<bool>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PlanFile {
    #[serde(rename = "ref")]
    reference: Option<String>,
    #[serde(default)]
    auto_rollback: bool,
    #[serde(default)]
    defaults: PolicyFile,
    waves: Vec<WaveFile>,
}

/// Reads a YAML plan file.
pub fn read_plan(path: &PathBuf) -> Result<RolloutPlan> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_plan(&text, &path.display().to_string())
}

/// A YAML plan's text (`label` names it in errors).
pub fn parse_plan(text: &str, label: &str) -> Result<RolloutPlan> {
    let path = std::path::Path::new(label);
    let f: PlanFile =
        serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut waves = vec![];
    for (i, w) in f.waves.iter().enumerate() {
        let picked = [
            w.selector.is_some(),
            w.names.is_some(),
            w.count.is_some(),
            w.percent.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if picked != 1 {
            bail!(
                "{}: wave {} must have exactly one of selector, names, count, percent",
                path.display(),
                i + 1
            );
        }
        let select = if let Some(s) = &w.selector {
            wave_plan::Select::Labels(s.clone())
        } else if let Some(n) = &w.names {
            wave_plan::Select::Names(ClusterNames { names: n.clone() })
        } else if let Some(c) = w.count {
            wave_plan::Select::Count(c)
        } else {
            let p = w.percent.as_ref().expect("one was picked").text();
            wave_plan::Select::Percent(
                p.trim_end_matches('%')
                    .trim()
                    .parse()
                    .with_context(|| format!("{}: wave {}: bad percent", path.display(), i + 1))?,
            )
        };
        let policy = PolicyFile {
            bake: w.bake.as_ref().map(|v| NumOrText::Text(v.text())),
            deadline: w.deadline.as_ref().map(|v| NumOrText::Text(v.text())),
            max_failures: w.max_failures.as_ref().map(|v| NumOrText::Text(v.text())),
            offline: w.offline.clone(),
            mirror_lag: w.mirror_lag.clone(),
            max_parallel: w.max_parallel,
            approval: w.approval,
        }
        .policy()?;
        waves.push(WavePlan {
            name: w.name.clone().unwrap_or_default(),
            select: Some(select),
            policy: Some(policy),
        });
    }
    Ok(RolloutPlan {
        r#ref: f.reference.unwrap_or_default(),
        waves,
        defaults: Some(f.defaults.policy()?),
        auto_rollback: f.auto_rollback,
    })
}

fn overlay(base: &mut WavePolicy, over: WavePolicy) {
    base.max_parallel = over.max_parallel.or(base.max_parallel);
    base.bake_seconds = over.bake_seconds.or(base.bake_seconds);
    base.deadline_seconds = over.deadline_seconds.or(base.deadline_seconds);
    base.max_failures = over.max_failures.or(base.max_failures.take());
    base.offline = over.offline.or(base.offline.take());
    base.mirror_lag = over.mirror_lag.or(base.mirror_lag.take());
    base.approval = over.approval.or(base.approval);
}

pub fn promote_plan(
    reference: String,
    to: String,
    policy: &PolicyArgs,
    auto_rollback: bool,
) -> Result<RolloutPlan> {
    ferry_proto::LabelSelector::parse(&to).map_err(|e| anyhow::anyhow!("--to {to:?}: {e}"))?;
    Ok(RolloutPlan {
        r#ref: reference,
        waves: vec![WavePlan {
            name: "promote".into(),
            select: Some(wave_plan::Select::Labels(to)),
            policy: None,
        }],
        defaults: Some(policy.policy()?),
        auto_rollback,
    })
}

/// Whether to show what a rollout would do before starting it.
#[derive(clap::Args, Debug, Default)]
pub struct Ask {
    /// First show the plan: its waves, their clusters, and what each
    /// cluster's agent says the commit would change there; then ask.
    #[arg(long)]
    pub preview: bool,
    /// Start without asking (with --preview, for scripts).
    #[arg(long)]
    pub yes: bool,
}

/// The plan of a rollout, each cluster with its preview summary.
async fn preview(client: &mut Admin, plan: &RolloutPlan) -> Result<String> {
    let planned = client
        .start_rollout(StartRolloutRequest {
            plan: Some(plan.clone()),
            dry_run: true,
        })
        .await
        .map_err(status)?
        .into_inner();
    let clusters: Vec<String> = planned
        .waves
        .iter()
        .flat_map(|w| w.clusters.iter().map(|c| c.name.clone()))
        .collect();
    let diffs = if clusters.is_empty() {
        Default::default()
    } else {
        super::diff::ask(
            client,
            clusters,
            String::new(),
            planned.commit.clone(),
            true,
            30,
        )
        .await?
    };
    let mut out = format!(
        "Rollout of {} ({}) in {} waves:\n",
        planned.r#ref,
        short(&planned.commit),
        planned.waves.len()
    );
    for w in &planned.waves {
        out.push_str(&format!(
            "  {} ({}):\n",
            w.name,
            super::output::clean(&w.selector)
        ));
        if w.clusters.is_empty() {
            out.push_str("    (no cluster)\n");
        }
        for c in &w.clusters {
            let line = diffs
                .clusters
                .iter()
                .find(|d| d.cluster == c.name)
                .map(super::diff::summary_line)
                .unwrap_or_else(|| format!("{}: not previewed", c.name));
            out.push_str(&format!("    {line}\n"));
        }
    }
    Ok(out)
}

/// Starts a rollout; with `ask.preview`, shows the plan first and asks
/// (unless `ask.yes`).
pub async fn start_asking(
    client: &mut Admin,
    plan: RolloutPlan,
    ask: &Ask,
    json: bool,
) -> Result<String> {
    if !ask.preview {
        return start(client, plan, json).await;
    }
    let shown = preview(client, &plan).await?;
    if ask.yes {
        return Ok(shown + &start(client, plan, json).await?);
    }
    if !std::io::stdin().is_terminal() {
        bail!("{shown}--preview asks before starting: give --yes to start without asking");
    }
    print!("{shown}Start this rollout? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        return Ok("not started\n".into());
    }
    start(client, plan, json).await
}

pub async fn start(client: &mut Admin, plan: RolloutPlan, json: bool) -> Result<String> {
    let r = client
        .start_rollout(StartRolloutRequest {
            plan: Some(plan),
            dry_run: false,
        })
        .await
        .map_err(status)?
        .into_inner();
    if json {
        return Ok(serde_json::to_string_pretty(&rollout_json(&r))? + "\n");
    }
    Ok(format!(
        "started rollout {} of {} ({}) in {} waves\nfollow it: ferry rollout status {} --watch\n",
        r.id,
        r.r#ref,
        short(&r.commit),
        r.waves.len(),
        r.id
    ))
}

pub async fn execute(client: &mut Admin, cmd: RolloutCommand, json: bool) -> Result<String> {
    let control = |id: String, c: RolloutControl| (id, c);
    let (id, c) = match cmd {
        RolloutCommand::Start {
            reference,
            waves,
            file,
            policy,
            auto_rollback,
            ask,
        } => {
            let mut plan = match &file {
                Some(f) => read_plan(f)?,
                None => RolloutPlan::default(),
            };
            if let Some(r) = reference {
                plan.r#ref = r;
            }
            if !waves.is_empty() {
                plan.waves = waves
                    .iter()
                    .map(|w| wave_from_flag(w))
                    .collect::<Result<_>>()?;
            }
            let mut defaults = plan.defaults.take().unwrap_or_default();
            overlay(&mut defaults, policy.policy()?);
            plan.defaults = Some(defaults);
            plan.auto_rollback |= auto_rollback;
            if plan.r#ref.is_empty() {
                bail!("give the ref to roll out: --commit REF (or ref: in the plan file)");
            }
            return start_asking(client, plan, &ask, json).await;
        }
        RolloutCommand::Status { id, watch: _ } => {
            let r = client
                .get_rollout(GetRolloutRequest {
                    id: id.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                return Ok(serde_json::to_string_pretty(&rollout_json(&r))? + "\n");
            }
            let clusters = cluster_states(client).await?;
            return Ok(render(&r, &clusters, &[]));
        }
        RolloutCommand::List => {
            let list = client
                .list_rollouts(ListRolloutsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .rollouts;
            if json {
                return Ok(serde_json::to_string_pretty(
                    &list.iter().map(rollout_json).collect::<Vec<_>>(),
                )? + "\n");
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|r| {
                    let n: usize = r.waves.iter().map(|w| w.clusters.len()).sum();
                    vec![
                        r.id.clone(),
                        r.r#ref.clone(),
                        short(&r.commit).into(),
                        phase(r).to_string(),
                        format!(
                            "{}/{}",
                            (r.current_wave as usize + 1).min(r.waves.len()),
                            r.waves.len()
                        ),
                        n.to_string(),
                        r.actor.clone(),
                        ago(r.created_unix_ms),
                    ]
                })
                .collect();
            return Ok(table(
                &[
                    "ID", "REF", "COMMIT", "PHASE", "WAVE", "CLUSTERS", "BY", "CREATED",
                ],
                &rows,
            ));
        }
        RolloutCommand::Pause { id } => control(id, RolloutControl::Pause),
        RolloutCommand::Resume { id } => control(id, RolloutControl::Resume),
        RolloutCommand::Abort { id } => control(id, RolloutControl::Abort),
        RolloutCommand::Rollback { id } => control(id, RolloutControl::Rollback),
        RolloutCommand::Approve { id } => control(id, RolloutControl::Approve),
    };
    let r = client
        .control_rollout(ControlRolloutRequest {
            id,
            control: c as i32,
        })
        .await
        .map_err(status)?
        .into_inner();
    if json {
        return Ok(serde_json::to_string_pretty(&rollout_json(&r))? + "\n");
    }
    Ok(format!(
        "rollout {}: {} ({})\n",
        r.id,
        phase(&r),
        super::output::clean(&r.message)
    ))
}

/// (applied commit, health) of every cluster.
async fn cluster_states(client: &mut Admin) -> Result<BTreeMap<String, (String, String, String)>> {
    let list = super::dial::all_clusters(client, 0).await?;
    Ok(list
        .into_iter()
        .map(|c| {
            let s = c.status.unwrap_or_default();
            let health = Health::try_from(s.health).unwrap_or_default().to_string();
            (
                c.name,
                (
                    c.pinned_commit,
                    s.applied_commit,
                    if c.connected {
                        health
                    } else {
                        format!("{health} (offline)")
                    },
                ),
            )
        })
        .collect())
}

fn phase(r: &Rollout) -> RolloutPhase {
    RolloutPhase::try_from(r.phase).unwrap_or_default()
}

fn cluster_phase(c: &ferry_proto::v1::RolloutCluster) -> RolloutClusterPhase {
    RolloutClusterPhase::try_from(c.phase).unwrap_or_default()
}

fn left(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The status table of a rollout, with the latest events.
pub fn render(
    r: &Rollout,
    clusters: &BTreeMap<String, (String, String, String)>,
    events: &[String],
) -> String {
    let now = ferry_proto::now_unix_ms();
    let mut out = format!(
        "Rollout {}: {} ({}), {}, wave {}/{}, by {}{}\n{}\n\n",
        r.id,
        r.r#ref,
        short(&r.commit),
        phase(r),
        (r.current_wave as usize + 1).min(r.waves.len()),
        r.waves.len(),
        r.actor,
        if r.auto_rollback {
            ", auto-rollback"
        } else {
            ""
        },
        super::output::clean(&r.message)
    );
    let mut rows = vec![];
    for (i, w) in r.waves.iter().enumerate() {
        let mut note = String::new();
        if i == r.current_wave as usize && w.baked_since_unix_ms > 0 {
            note = format!(
                "bake {} left",
                left(w.bake_ms - (now - w.baked_since_unix_ms))
            );
        } else if w.approval && i >= r.current_wave as usize && w.started_unix_ms == 0 {
            note = "needs approval".into();
        }
        for (j, c) in w.clusters.iter().enumerate() {
            let (pinned, applied, health) = clusters.get(&c.name).cloned().unwrap_or_default();
            let mut cluster_note = c.reason.clone();
            if cluster_phase(c) == RolloutClusterPhase::Pinned && c.pinned_unix_ms > 0 {
                cluster_note = format!(
                    "deadline in {}",
                    left(w.deadline_ms - (now - c.pinned_unix_ms))
                );
            }
            rows.push(vec![
                if j == 0 {
                    w.name.clone()
                } else {
                    String::new()
                },
                if j == 0 {
                    w.selector.clone()
                } else {
                    String::new()
                },
                c.name.clone(),
                cluster_phase(c).to_string(),
                short(&pinned).into(),
                short(&applied).into(),
                health,
                if j == 0 && !note.is_empty() {
                    format!("{note} {cluster_note}").trim().to_string()
                } else {
                    cluster_note
                },
            ]);
        }
    }
    out.push_str(&table(
        &[
            "WAVE", "SELECTOR", "CLUSTER", "STATE", "PINNED", "APPLIED", "HEALTH", "NOTE",
        ],
        &rows,
    ));
    if !events.is_empty() {
        out.push_str("\nEvents:\n");
        for e in events.iter().rev().take(10).rev() {
            let _ = writeln!(out, "  {}", super::output::clean(e));
        }
    }
    out
}

/// Follows a rollout from the server's event stream until it ends.
pub async fn watch(client: &mut Admin, id: String) -> Result<()> {
    let mut r = client
        .get_rollout(GetRolloutRequest { id })
        .await
        .map_err(status)?
        .into_inner();
    let mut stream = client
        .watch_events(WatchEventsRequest {
            rollout: r.id.clone(),
            after_id: 0,
        })
        .await
        .map_err(status)?
        .into_inner();
    let tty = std::io::stdout().is_terminal();
    let mut clusters = cluster_states(client).await?;
    let mut events: Vec<String> = vec![];
    let mut countdown = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut last = String::new();
    loop {
        tokio::select! {
            e = stream.message() => match e.map_err(status)? {
                Some(e) => {
                    let who = if e.cluster.is_empty() { String::new() } else { format!("{}: ", e.cluster) };
                    events.push(format!("{} {who}{}", ago(e.at_unix_ms), e.message));
                    r = client.get_rollout(GetRolloutRequest { id: r.id.clone() }).await.map_err(status)?.into_inner();
                    clusters = cluster_states(client).await?;
                }
                None => break,
            },
            // Only countdowns move between events; nothing is fetched.
            _ = countdown.tick() => {}
        }
        let view = render(&r, &clusters, &events);
        if view != last {
            let mut o = std::io::stdout().lock();
            if tty {
                write!(o, "\x1b[2J\x1b[H")?;
            }
            write!(o, "{view}")?;
            if !tty {
                writeln!(o)?;
            }
            o.flush()?;
            last = view;
        }
        if !matches!(
            phase(&r),
            RolloutPhase::Running | RolloutPhase::Paused | RolloutPhase::AwaitingApproval
        ) {
            break;
        }
    }
    Ok(())
}

pub fn rollout_json(r: &Rollout) -> serde_json::Value {
    serde_json::json!({
        "id": r.id, "ref": r.r#ref, "commit": r.commit, "phase": phase(r).to_string(), "message": r.message,
        "currentWave": r.current_wave, "actor": r.actor, "autoRollback": r.auto_rollback,
        "createdUnixMs": r.created_unix_ms, "updatedUnixMs": r.updated_unix_ms,
        "waves": r.waves.iter().map(|w| serde_json::json!({
            "name": w.name, "selector": w.selector, "bakeMs": w.bake_ms, "deadlineMs": w.deadline_ms,
            "approval": w.approval, "startedUnixMs": w.started_unix_ms, "bakedSinceUnixMs": w.baked_since_unix_ms,
            "clusters": w.clusters.iter().map(|c| serde_json::json!({
                "name": c.name, "phase": cluster_phase(c).to_string(), "previousCommit": c.previous_commit, "reason": c.reason, "pinnedUnixMs": c.pinned_unix_ms,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_wave_flags() {
        assert_eq!(seconds("90").unwrap(), 90);
        assert_eq!(seconds("5m").unwrap(), 300);
        assert!(seconds("5 minutes").is_err());
        assert!(matches!(
            wave_from_flag("50%").unwrap().select,
            Some(wave_plan::Select::Percent(50))
        ));
        assert!(matches!(
            wave_from_flag("3").unwrap().select,
            Some(wave_plan::Select::Count(3))
        ));
        assert!(matches!(
            wave_from_flag("ring=canary").unwrap().select,
            Some(wave_plan::Select::Labels(_))
        ));
        assert!(matches!(
            wave_from_flag("names:a,b").unwrap().select,
            Some(wave_plan::Select::Names(_))
        ));
    }

    #[test]
    fn plan_files_parse_and_reject_typos() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plan.yaml");
        std::fs::write(&p, "ref: main\nautoRollback: true\ndefaults: {bake: 5m, maxFailures: 1}\nwaves:\n  - {name: canary, selector: ring=canary}\n  - {percent: 50, approval: true}\n").unwrap();
        let plan = read_plan(&p).unwrap();
        assert_eq!(plan.waves.len(), 2);
        assert_eq!(plan.defaults.unwrap().bake_seconds, Some(300));
        assert!(plan.auto_rollback);
        std::fs::write(&p, "ref: main\nwaves:\n  - {selektor: ring=canary}\n").unwrap();
        assert!(read_plan(&p).is_err());
    }
}
