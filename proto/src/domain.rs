//! Domain types shared by agent and coordinator.

use std::collections::BTreeMap;
use std::fmt;

/// A domain value that failed validation.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Invalid {
    /// A commit that is not 40 lowercase hex digits.
    #[error("{0:?} is not a full commit (40 hex digits)")]
    Commit(String),
    /// A cluster name that is not a DNS label.
    #[error("{0:?} is not a valid cluster name (lowercase letters, digits and '-', at most 63)")]
    ClusterName(String),
    /// A `key=value` label that does not parse.
    #[error("{0:?} is not a label (key=value)")]
    Label(String),
    /// A label key or value Kubernetes would refuse.
    #[error("label {key:?}={value:?}: {why}")]
    LabelSyntax {
        key: String,
        value: String,
        why: &'static str,
    },
    /// A path template naming a label the cluster does not have.
    #[error(
        "the template {template:?} needs label {label:?}, which cluster {cluster} does not have"
    )]
    MissingLabel {
        template: String,
        label: String,
        cluster: String,
    },
    /// A label selector that does not parse.
    #[error("label selector {selector:?}: {reason}")]
    Selector { selector: String, reason: String },
    /// A path template with an unknown placeholder or an unsafe path.
    #[error("bad template {0:?}: {1}")]
    Template(String, String),
}

/// A full 40-hex commit id. Serialized as its text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Commit(String);

impl serde::Serialize for Commit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Commit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Commit::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde for an optional commit kept as text, where "" means none (the
/// form older records and the wire use).
pub mod commit_or_empty {
    use super::Commit;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &Option<Commit>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.as_ref().map_or("", Commit::as_str))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Commit>, D::Error> {
        let s = String::deserialize(d)?;
        Commit::parse_optional(&s).map_err(serde::de::Error::custom)
    }
}

impl Commit {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Commit(s.to_ascii_lowercase()))
        } else {
            Err(Invalid::Commit(s.to_string()))
        }
    }
    /// "" is none; anything else must be a full commit.
    pub fn parse_optional(s: &str) -> Result<Option<Self>, Invalid> {
        if s.is_empty() {
            Ok(None)
        } else {
            Commit::parse(s).map(Some)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 8 digits, for people.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }
}

impl fmt::Display for Commit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a cluster name: a DNS label, as it also names certificates.
pub fn validate_cluster_name(name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Invalid::ClusterName(name.to_string()))
    }
}

/// Parses `key=value` and checks both as Kubernetes does.
pub fn parse_label(s: &str) -> Result<(String, String), Invalid> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => {
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            validate_label(&k, &v)?;
            Ok((k, v))
        }
        _ => Err(Invalid::Label(s.to_string())),
    }
}

/// A name segment of a label: at most 63 of `[A-Za-z0-9_.-]`, starting and
/// ending with a letter or digit.
fn label_segment(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Checks a label as Kubernetes does: the key is an optional DNS-subdomain
/// prefix and `/` then a name; the value is empty or a name.
pub fn validate_label(key: &str, value: &str) -> Result<(), Invalid> {
    let bad = |why| Invalid::LabelSyntax {
        key: key.to_string(),
        value: value.to_string(),
        why,
    };
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(bad("the key's prefix must be a DNS subdomain"));
        }
    }
    if !label_segment(name) {
        return Err(bad(
            "the key must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        ));
    }
    if !value.is_empty() && !label_segment(value) {
        return Err(bad(
            "the value must be empty or at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        ));
    }
    Ok(())
}

/// The default path template.
pub const DEFAULT_PATH_TEMPLATE: &str = "clusters/{cluster}";

/// Replaces `{cluster}` and `{label.KEY}` in `template` (path templates,
/// per-cluster values of Helm sources).
pub fn substitute(
    template: &str,
    cluster: &str,
    labels: &BTreeMap<String, String>,
) -> Result<String, Invalid> {
    let bad = |why: &str| Invalid::Template(template.to_string(), why.to_string());
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').ok_or_else(|| bad("unclosed '{'"))? + start;
        let key = &rest[start + 1..end];
        if key == "cluster" {
            out.push_str(cluster);
        } else if let Some(label) = key.strip_prefix("label.") {
            let v = labels.get(label).ok_or_else(|| Invalid::MissingLabel {
                template: template.to_string(),
                label: label.to_string(),
                cluster: cluster.to_string(),
            })?;
            out.push_str(v);
        } else {
            return Err(bad(&format!("unknown placeholder {{{key}}}")));
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Renders a path template with `{cluster}` and `{label.KEY}` placeholders.
pub fn render_path(
    template: &str,
    cluster: &str,
    labels: &BTreeMap<String, String>,
) -> Result<String, Invalid> {
    let bad = |why: &str| Invalid::Template(template.to_string(), why.to_string());
    let out = substitute(template, cluster, labels)?;
    let path = out.trim_matches('/').to_string();
    if path.split('/').any(|seg| seg == ".." || seg == ".") || path.contains("//") {
        return Err(bad(&format!("resolves to an unsafe path {path:?}")));
    }
    Ok(path)
}

impl fmt::Display for crate::v1::Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "-",
            Self::Pending => "Pending",
            Self::Syncing => "Syncing",
            Self::Synced => "Synced",
            Self::Failed => "Failed",
        })
    }
}

impl fmt::Display for crate::v1::Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "Unknown",
            Self::Healthy => "Healthy",
            Self::Progressing => "Progressing",
            Self::Degraded => "Degraded",
        })
    }
}

impl fmt::Display for crate::v1::RolloutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "-",
            Self::Running => "Running",
            Self::Paused => "Paused",
            Self::AwaitingApproval => "AwaitingApproval",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Aborted => "Aborted",
            Self::RolledBack => "RolledBack",
        })
    }
}

impl fmt::Display for crate::v1::RolloutClusterPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "-",
            Self::Waiting => "Waiting",
            Self::Pinned => "Pinned",
            Self::Healthy => "Healthy",
            Self::Failed => "Failed",
            Self::Skipped => "Skipped",
            Self::RolledBack => "RolledBack",
        })
    }
}

impl fmt::Display for crate::v1::OfflinePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "-",
            Self::Wait => "wait",
            Self::Skip => "skip",
            Self::Fail => "fail",
        })
    }
}

/// `url` with the password of its user part, if it has one, shown as `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..host_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates() {
        let labels: BTreeMap<_, _> = [("region".to_string(), "eu".to_string())].into();
        assert_eq!(
            render_path(DEFAULT_PATH_TEMPLATE, "c1", &labels).unwrap(),
            "clusters/c1"
        );
        assert_eq!(
            render_path("clusters/{label.region}/{cluster}", "c1", &labels).unwrap(),
            "clusters/eu/c1"
        );
        assert!(matches!(
            render_path("x/{label.zone}", "c1", &labels),
            Err(Invalid::MissingLabel { .. })
        ));
        assert!(render_path("x/{nope}", "c1", &labels).is_err());
        assert!(render_path("../{cluster}", "c1", &labels).is_err());
    }

    #[test]
    fn labels_follow_kubernetes_syntax() {
        assert!(parse_label("region=eu-west").is_ok());
        assert!(parse_label("ferry.dev/ring=canary").is_ok());
        assert!(parse_label("empty=").is_ok());
        for bad in [
            "region=../../secrets",
            "region=eu/west",
            "region=-eu",
            "Bad/Prefix=x",
            "a b=c",
            &format!("k={}", "v".repeat(64)),
        ] {
            assert!(
                matches!(parse_label(bad), Err(Invalid::LabelSyntax { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn commits_and_names() {
        assert!(Commit::parse(&"a".repeat(40)).is_ok());
        assert!(Commit::parse("abc").is_err());
        assert!(validate_cluster_name("eu-1").is_ok());
        assert!(validate_cluster_name("EU_1").is_err());
    }
}
