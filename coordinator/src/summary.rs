//! Log lines that stand for many clusters. A pin or a rollout's wave moves
//! thousands of clusters at once: a line for each at info would flood the
//! log and take the fan-out's CPU (10,000 lines cost about 50 ms of a
//! core). The ledger and each rollout's events keep every cluster; above
//! a few, the log says how many and names the first ones, and the line for
//! each cluster is at debug. Lines keep the targets they had: pins the
//! admin service's, rollout events the driver's.

use ferry_proto::ledger::{Event, LedgerEntry};
use std::collections::BTreeMap;

/// Up to this many clusters get a line each at info.
pub const NAMED: usize = 5;

/// The targets of the lines.
const PINS: &str = "ferry_coordinator::service::admin";
const EVENTS: &str = "ferry_coordinator::driver";

/// Names the first [`NAMED`] of `names` and counts the rest:
/// `a, b, c, d, e and 9995 more`.
pub fn some_of<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let mut named = vec![];
    let mut rest = 0usize;
    for n in names {
        if named.len() < NAMED {
            named.push(n);
        } else {
            rest += 1;
        }
    }
    let named = named.join(", ");
    match rest {
        0 => named,
        n => format!("{named} and {n} more"),
    }
}

/// Logs the pins a call made: each at info when there are few, else one
/// line at info and each at debug.
pub fn pinned(entries: &[LedgerEntry], actor: &str) {
    let few = entries.len() <= NAMED;
    for e in entries {
        let from = e.from.as_ref().map(|c| c.short());
        if few {
            tracing::info!(target: PINS, cluster = %e.cluster, from = ?from, to = %e.to, actor, "pinned");
        } else {
            tracing::debug!(target: PINS, cluster = %e.cluster, from = ?from, to = %e.to, actor, "pinned");
        }
    }
    if let (false, Some(first)) = (few, entries.first()) {
        tracing::info!(
            target: PINS,
            clusters = entries.len(),
            names = ?some_of(entries.iter().map(|e| e.cluster.as_str())),
            to = %first.to,
            actor,
            "pinned"
        );
    }
}

/// Logs a rollout's events: the rollout's own, and those of few clusters
/// with the same message, each at info; the same message for many
/// clusters as one line at info (each at debug). A wave's pins and its
/// clusters turning Healthy are one line each; distinct failures keep
/// their own lines.
pub fn rollout_events(events: &[Event]) {
    let mut by_message: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in events {
        if e.cluster.is_empty() {
            tracing::info!(target: EVENTS, message = %e.message, "rollout event");
        } else {
            by_message.entry(&e.message).or_default().push(&e.cluster);
        }
    }
    for (message, clusters) in by_message {
        if clusters.len() <= NAMED {
            for cluster in clusters {
                tracing::info!(target: EVENTS, cluster, message, "rollout event");
            }
            continue;
        }
        for cluster in &clusters {
            tracing::debug!(target: EVENTS, cluster, message, "rollout event");
        }
        tracing::info!(
            target: EVENTS,
            clusters = clusters.len(),
            names = ?some_of(clusters.iter().copied()),
            message,
            "rollout events"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What `f` logs at info, one string per line.
    fn logged(f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let out = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .without_time()
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    fn event(cluster: &str, message: &str) -> Event {
        Event {
            id: 0,
            at_ms: 0,
            rollout: "r1".into(),
            cluster: cluster.into(),
            message: message.into(),
            actor: "ops".into(),
        }
    }

    #[test]
    fn names_a_few_and_counts_the_rest() {
        assert_eq!(some_of(["a"]), "a");
        assert_eq!(some_of(["a", "b", "c", "d", "e"]), "a, b, c, d, e");
        let many: Vec<String> = (0..10_000).map(|i| format!("c{i}")).collect();
        assert_eq!(
            some_of(many.iter().map(String::as_str)),
            "c0, c1, c2, c3, c4 and 9995 more"
        );
    }

    #[test]
    fn a_wave_of_thousands_logs_a_line_per_message() {
        let mut events = vec![event("", "wave rest started")];
        events.extend((0..8_910).map(|i| event(&format!("c{i}"), "pinned to abc1234 (wave rest)")));
        events.push(event("c1", "failed: image pull backoff"));
        events.push(event("c2", "failed: not Healthy at the target within 600s"));
        let lines = logged(|| rollout_events(&events));
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].contains("wave rest started"), "{lines:#?}");
        let failures: Vec<&String> = lines.iter().filter(|l| l.contains("failed")).collect();
        assert_eq!(failures.len(), 2, "{lines:#?}");
        assert!(failures[0].contains("cluster=\"c1\"") || failures[0].contains("cluster=c1"));
        let wave = lines
            .iter()
            .find(|l| l.contains("pinned to abc1234"))
            .expect("the wave's line");
        assert!(wave.contains("clusters=8910"), "{wave}");
        assert!(wave.contains("c0, c1, c2, c3, c4 and 8905 more"), "{wave}");
    }

    #[test]
    fn a_pin_of_thousands_logs_one_line_and_of_a_few_a_line_each() {
        let commit =
            ferry_proto::Commit::parse("0123456789abcdef0123456789abcdef01234567").unwrap();
        let entry = |i: usize| LedgerEntry {
            id: i as i64,
            at_ms: 0,
            actor: "ops".into(),
            cluster: format!("c{i}"),
            from: None,
            to: commit.clone(),
            reason: "bench".into(),
            rollout: None,
            signer: None,
        };
        let few: Vec<LedgerEntry> = (0..3).map(entry).collect();
        let lines = logged(|| pinned(&few, "ops"));
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[2].contains("c2"), "{lines:#?}");

        let many: Vec<LedgerEntry> = (0..10_000).map(entry).collect();
        let lines = logged(|| pinned(&many, "ops"));
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(lines[0].contains("clusters=10000"), "{lines:#?}");
        assert!(lines[0].contains("and 9995 more"), "{lines:#?}");
        assert!(lines[0].contains(commit.as_str()), "{lines:#?}");

        assert!(logged(|| pinned(&[], "ops")).is_empty());
    }
}
