//! Field selectors the API server supports on every type; label selectors
//! are ferry-proto's, matched against an object's labels.

use serde_json::Value;

pub use ferry_proto::LabelSelector;

/// Whether an object's labels satisfy `sel`.
pub fn labels_match(sel: &LabelSelector, obj: &Value) -> bool {
    let labels = obj.pointer("/metadata/labels");
    sel.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
}

/// A field selector on `metadata.name` and `metadata.namespace`.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = vec![];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector {part:?}"));
            };
            if !matches!(k, "metadata.name" | "metadata.namespace") {
                return Err(format!("field label not supported: {k}"));
            }
            reqs.push((k.to_string(), eq, v.to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(k, eq, v)| {
            let field = k.strip_prefix("metadata.").unwrap_or(k);
            let actual = obj
                .pointer(&format!("/metadata/{field}"))
                .and_then(Value::as_str)
                .unwrap_or("");
            (actual == v) == *eq
        })
    }
}
