//! What the CLI prints: tables for people, JSON for tools. Everything
//! shown passes through here.

use ferry_proto::v1::{Cluster, Health, LedgerEntry, Phase};
use serde_json::{Value, json};
use std::borrow::Cow;

/// Text as it may reach a terminal: control characters (escape sequences
/// that would retitle, recolour or clear the operator's terminal, and line
/// breaks that would forge table rows) shown as visible escapes. Agents
/// and API tokens can put text in front of operators; none of it is
/// printed raw. JSON output is escaped by the encoder.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| match c {
                '\n' => "\\n".to_string(),
                '\t' => "\\t".to_string(),
                '\r' => "\\r".to_string(),
                c if c.is_control() => c.escape_unicode().to_string(),
                c => c.to_string(),
            })
            .collect(),
    )
}

/// A listing as a table, or as a JSON array with `-o json`.
pub fn listing<T>(
    json: bool,
    items: &[T],
    to_json: fn(&T) -> Value,
    to_table: fn(&[T]) -> String,
) -> anyhow::Result<String> {
    if json {
        Ok(serde_json::to_string_pretty(&items.iter().map(to_json).collect::<Vec<_>>())? + "\n")
    } else {
        Ok(to_table(items))
    }
}

/// The first 8 characters of a commit id, for people ("-" for none).
pub fn short(c: &str) -> &str {
    if c.is_empty() {
        return "-";
    }
    let end = c.char_indices().nth(8).map_or(c.len(), |(i, _)| i);
    &c[..end]
}

pub fn ago(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let secs = (ferry_proto::now_unix_ms() - ms).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

fn labels(c: &Cluster) -> String {
    let mut l: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    if l.is_empty() {
        "-".into()
    } else {
        l.join(",")
    }
}

fn phase_health(c: &Cluster) -> (String, String) {
    match &c.status {
        Some(s) => (
            Phase::try_from(s.phase).unwrap_or_default().to_string(),
            Health::try_from(s.health).unwrap_or_default().to_string(),
        ),
        None => ("-".into(), "-".into()),
    }
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(&format!("{c:<w$}  ", w = widths[i]));
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn clusters_table(list: &[Cluster]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let (phase, health) = phase_health(c);
            let applied = c
                .status
                .as_ref()
                .map(|s| s.applied_commit.as_str())
                .unwrap_or("");
            vec![
                c.name.clone(),
                labels(c),
                if c.connected {
                    "yes".into()
                } else {
                    "no".into()
                },
                short(&c.pinned_commit).into(),
                short(applied).into(),
                phase,
                health,
                ago(c.last_seen_unix_ms),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "LABELS",
            "CONNECTED",
            "PINNED",
            "APPLIED",
            "PHASE",
            "HEALTH",
            "LAST SEEN",
        ],
        &rows,
    )
}

pub fn cluster_details(c: &Cluster) -> String {
    let (phase, health) = phase_health(c);
    let agent_version = clean(&c.agent_version);
    let mut s = format!(
        "Name:       {}\nLabels:     {}\nConnected:  {}\nAgent:      {}\nPath:       {}\nPinned:     {} (generation {})\nPhase:      {phase}\nHealth:     {health}\nLast seen:  {}\n",
        c.name,
        labels(c),
        c.connected,
        if agent_version.is_empty() {
            "-"
        } else {
            &agent_version
        },
        if c.path_error.is_empty() {
            clean(&c.path).into_owned()
        } else {
            format!("unresolved: {}", clean(&c.path_error))
        },
        if c.pinned_commit.is_empty() {
            "-"
        } else {
            &c.pinned_commit
        },
        c.generation,
        ago(c.last_seen_unix_ms),
    );
    if let Some(st) = &c.status {
        s.push_str(&format!(
            "Applied:    {}\nTarget:     {}\nObjects:    {}\nMessage:    {}\n",
            if st.applied_commit.is_empty() {
                "-".into()
            } else {
                clean(&st.applied_commit)
            },
            if st.target_commit.is_empty() {
                "-".into()
            } else {
                clean(&st.target_commit)
            },
            st.objects,
            clean(&st.message),
        ));
        if !st.signer.is_empty() {
            s.push_str(&format!("Signed by:  {}\n", clean(&st.signer)));
        }
        if !st.problems.is_empty() {
            s.push_str("Problems:\n");
            for p in &st.problems {
                let src = if p.source.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", clean(&p.source))
                };
                s.push_str(&format!(
                    "  {}{src}: {}\n",
                    clean(&p.object),
                    clean(&p.message)
                ));
            }
        }
    }
    s
}

pub fn history_table(entries: &[LedgerEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                ago(e.at_unix_ms),
                e.cluster.clone(),
                short(&e.from_commit).into(),
                short(&e.to_commit).into(),
                e.actor.clone(),
                if e.rollout.is_empty() {
                    "-".into()
                } else {
                    e.rollout.clone()
                },
                e.reason.clone(),
                if e.signer.is_empty() {
                    "-".into()
                } else {
                    e.signer.clone()
                },
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "WHEN",
            "CLUSTER",
            "FROM",
            "TO",
            "ACTOR",
            "ROLLOUT",
            "REASON",
            "SIGNED BY",
        ],
        &rows,
    )
}

pub fn cluster_json(c: &Cluster) -> Value {
    let status = c.status.as_ref().map(|s| {
        json!({
            "observedGeneration": s.observed_generation,
            "targetCommit": s.target_commit,
            "appliedCommit": s.applied_commit,
            "phase": Phase::try_from(s.phase).unwrap_or_default().to_string(),
            "health": Health::try_from(s.health).unwrap_or_default().to_string(),
            "message": s.message,
            "objects": s.objects,
            "driftCorrections": s.drift_corrections,
            "problems": s.problems.iter().map(|p| json!({"object": p.object, "source": p.source, "message": p.message})).collect::<Vec<_>>(),
            "lastSyncUnixMs": s.last_sync_unix_ms,
            "reportedUnixMs": s.reported_unix_ms,
            "signer": s.signer,
        })
    });
    json!({
        "name": c.name,
        "labels": c.labels,
        "connected": c.connected,
        "pinnedCommit": c.pinned_commit,
        "generation": c.generation,
        "path": c.path,
        "pathError": c.path_error,
        "agentVersion": c.agent_version,
        "lastSeenUnixMs": c.last_seen_unix_ms,
        "status": status,
    })
}

pub fn ledger_json(e: &LedgerEntry) -> Value {
    json!({
        "id": e.id, "atUnixMs": e.at_unix_ms, "actor": e.actor, "cluster": e.cluster,
        "from": e.from_commit, "to": e.to_commit, "reason": e.reason, "rollout": e.rollout,
        "signer": e.signer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_reaches_the_terminal_raw() {
        let hostile = "ok\u{1b}]0;owned\u{7}\u{1b}[2J\nFAKE ROW\u{9b}31m";
        let shown = clean(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\u{1b}]0;owned"), "{shown}");
        assert!(shown.contains("\\nFAKE ROW"), "{shown}");
        let t = table(&["A"], &[vec![hostile.to_string()]]);
        assert!(!t.contains('\u{1b}') && t.lines().count() == 2, "{t:?}");
        assert_eq!(short("é".repeat(20).as_str()), "é".repeat(8));
    }
}
