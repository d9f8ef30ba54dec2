//! What a status report may carry. The coordinator stores and shows what
//! agents report, so nothing an agent sends is taken as it is: commit ids
//! must be commit ids, and text is bounded (a cluster must not be able to
//! blind operators by filling every listing). The agent bounds what it
//! sends the same way, so a long list of problems is cut with a count of
//! what was left out rather than refused.

use crate::domain::Commit;
use crate::v1::{ObjectProblem, StatusReport};

/// Longest message kept, in bytes.
pub const MAX_MESSAGE: usize = 4 << 10;
/// Most problems kept (one more says how many were left out).
pub const MAX_PROBLEMS: usize = 100;
/// Longest problem field (object, source, message) kept, in bytes.
pub const MAX_PROBLEM_FIELD: usize = 1 << 10;
/// Longest agent version kept, in bytes.
pub const MAX_VERSION: usize = 64;

/// A report the coordinator will not store.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BadReport {
    /// A commit field that is neither empty nor a full commit id.
    #[error("{field} is not a commit id")]
    Commit { field: &'static str },
}

/// `s` cut to at most `max` bytes at a character boundary, saying so.
fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    // Room for the note saying what was cut.
    let mut end = max.saturating_sub(32);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let dropped = s.len() - end;
    s.truncate(end);
    s.push_str(&format!("… ({dropped} bytes cut)"));
}

/// Bounds a report in place: message, problems and their fields.
pub fn bound(r: &mut StatusReport) {
    cut(&mut r.message, MAX_MESSAGE);
    cut(&mut r.signer, MAX_PROBLEM_FIELD);
    if r.problems.len() > MAX_PROBLEMS {
        let more = r.problems.len() - MAX_PROBLEMS;
        r.problems.truncate(MAX_PROBLEMS);
        r.problems.push(ObjectProblem {
            object: String::new(),
            source: String::new(),
            message: format!("… and {more} more problem(s) not shown"),
        });
    }
    for p in &mut r.problems {
        cut(&mut p.object, MAX_PROBLEM_FIELD);
        cut(&mut p.source, MAX_PROBLEM_FIELD);
        cut(&mut p.message, MAX_PROBLEM_FIELD);
    }
}

/// Checks what can be checked (commit ids) and bounds the rest.
pub fn checked(mut r: StatusReport) -> Result<StatusReport, BadReport> {
    for (field, value) in [
        ("target_commit", &r.target_commit),
        ("applied_commit", &r.applied_commit),
    ] {
        if Commit::parse_optional(value).is_err() {
            return Err(BadReport::Commit { field });
        }
    }
    bound(&mut r);
    Ok(r)
}

/// An agent's version string, bounded and printable.
pub fn agent_version(v: &str) -> String {
    let mut s: String = v.chars().filter(|c| !c.is_control()).collect();
    cut(&mut s, MAX_VERSION);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_text_and_problems_and_refuses_bad_commits() {
        let mut r = StatusReport {
            message: "é".repeat(10_000),
            problems: (0..100_000)
                .map(|i| ObjectProblem {
                    object: format!("ConfigMap/x/{i}"),
                    source: "a.yaml#1".into(),
                    message: "x".repeat(5_000),
                })
                .collect(),
            ..Default::default()
        };
        bound(&mut r);
        assert!(r.message.len() <= MAX_MESSAGE, "{}", r.message.len());
        assert!(r.message.ends_with("bytes cut)"));
        assert_eq!(r.problems.len(), MAX_PROBLEMS + 1);
        assert!(r.problems[MAX_PROBLEMS].message.contains("99900 more"));
        assert!(
            r.problems
                .iter()
                .all(|p| p.message.len() <= MAX_PROBLEM_FIELD)
        );
        let bad = StatusReport {
            applied_commit: "\u{1b}]0;owned\u{7}".into(),
            ..Default::default()
        };
        assert_eq!(
            checked(bad),
            Err(BadReport::Commit {
                field: "applied_commit"
            })
        );
        assert!(checked(StatusReport::default()).is_ok());
        assert_eq!(agent_version("1.0\u{1b}[2J"), "1.0[2J");
    }
}
