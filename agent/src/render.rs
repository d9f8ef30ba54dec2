//! A cluster directory to Kubernetes objects, validated before anything is
//! applied.
//!
//! Which files count: every `*.yaml`, `*.yml` and `*.json` file below the
//! cluster's path, recursively, in path order, except files and folders
//! whose name starts with `.`. YAML files may hold several documents
//! separated by `---`; empty documents are skipped; a `List` is expanded.
//! Every error names the file and the document (counted from 1).
//!
//! A directory with a `kustomization.yaml` (`.yml`, `Kustomization`) at its
//! root is built by an external kustomize instead (the whole repository
//! tree at the commit is exported, so overlays can reach their bases).

use crate::source::File;
use std::io::Read;

/// The largest document applied: what kube-apiserver accepts in one request.
pub const MAX_DOCUMENT_BYTES: usize = 3 << 20;

/// The most kustomize output read.
pub const MAX_BUILD_BYTES: u64 = crate::source::MAX_TOTAL_BYTES;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;

/// One object to apply, with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// `path/to/file.yaml#2`: the file and document it came from.
    pub source: String,
    pub value: Value,
}

/// An object's identity: apiVersion's group, kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

impl Object {
    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or("")
    }
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
    pub fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }
    pub fn group(&self) -> &str {
        self.api_version().rsplit_once('/').map_or("", |(g, _)| g)
    }
    pub fn reference(&self) -> ObjectRef {
        ObjectRef {
            group: self.group().to_string(),
            kind: self.kind().to_string(),
            namespace: self.namespace().map(str::to_string),
            name: self.name().to_string(),
        }
    }
}

/// Something wrong with one document.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// `file#doc`.
    pub source: String,
    /// The object, when it got far enough to have a name.
    pub object: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.object.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{} ({}): {}", self.source, self.object, self.message)
        }
    }
}

/// Whether the directory is a kustomization (a kustomization file at its root).
pub fn is_kustomization(files: &[File]) -> bool {
    files.iter().any(|f| {
        matches!(
            f.path.as_str(),
            "kustomization.yaml" | "kustomization.yml" | "Kustomization"
        )
    })
}

/// Runs `kustomize` (the command, then the directory) and returns its output
/// as one YAML file named after the build.
pub fn kustomize(command: &[String], dir: &std::path::Path, label: &str) -> Result<File, Problem> {
    let problem = |message: String| Problem {
        source: format!("kustomize build {label}"),
        object: String::new(),
        message,
    };
    let data = run_tool(
        command,
        &[dir.as_os_str().to_owned()],
        &[],
        "install kustomize (or kubectl), or set --kustomize",
    )
    .map_err(problem)?;
    Ok(File {
        path: format!("kustomize build {label}.yaml"),
        data,
    })
}

/// Runs an external renderer (`command`, then `args`) and returns what it
/// printed: at most [`MAX_BUILD_BYTES`], both pipes read at once, its
/// error output in the error. `hint` says what to do when it is missing.
pub fn run_tool(
    command: &[String],
    args: &[std::ffi::OsString],
    env: &[(&str, &std::path::Path)],
    hint: &str,
) -> Result<Vec<u8>, String> {
    let (program, fixed) = command
        .split_first()
        .ok_or_else(|| format!("no command is configured: {hint}"))?;
    let mut child = std::process::Command::new(program)
        .args(fixed)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!("{program} not found: {hint}")
            } else {
                format!("running {program}: {e}")
            }
        })?;
    // Read both pipes at once (a full stderr pipe would stall the build),
    // and no more output than a directory may hold.
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut e = Vec::new();
        let _ = (&mut stderr).take(64 << 10).read_to_end(&mut e);
        e
    });
    let mut data = Vec::new();
    let read = child
        .stdout
        .take()
        .expect("piped")
        .take(MAX_BUILD_BYTES + 1)
        .read_to_end(&mut data);
    if data.len() as u64 > MAX_BUILD_BYTES {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "its output is over {MAX_BUILD_BYTES} bytes; nothing was applied"
        ));
    }
    let status = child
        .wait()
        .map_err(|e| format!("running {program}: {e}"))?;
    let err = errors.join().unwrap_or_default();
    if let Err(e) = read {
        return Err(format!("reading its output: {e}"));
    }
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        return Err(format!("failed: {}", err.trim()));
    }
    Ok(data)
}

fn counts(path: &str) -> bool {
    let hidden = path.split('/').any(|seg| seg.starts_with('.'));
    !hidden && (path.ends_with(".yaml") || path.ends_with(".yml") || path.ends_with(".json"))
}

/// The files of a cluster's directory worth reading: manifests and a
/// kustomization. Nothing else is read from Git.
pub fn wanted(path: &str) -> bool {
    counts(path) || path == "Kustomization"
}

/// Splits YAML text at document separators, keeping each document's text.
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        let is_sep = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_sep {
            docs.push(String::new());
            // Content after `--- ` on the same line belongs to the new document.
            let rest = line[3..].trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                docs.last_mut().expect("pushed").push_str(rest);
                docs.last_mut().expect("pushed").push('\n');
            }
        } else if line == "..." {
            continue;
        } else {
            let d = docs.last_mut().expect("at least one");
            d.push_str(line);
            d.push('\n');
        }
    }
    docs
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b':'
        })
}

fn check(value: &Value) -> Result<(), String> {
    let Some(map) = value.as_object() else {
        return Err("a document must be a mapping with apiVersion, kind and metadata".into());
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if api_version.is_empty() || api_version.matches('/').count() > 1 {
        return Err(format!(
            "apiVersion is missing or invalid ({api_version:?})"
        ));
    }
    if map
        .get("kind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("kind is missing".into());
    }
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        return Err("metadata.name is missing (generateName is not supported by GitOps)".into());
    }
    if !name_ok(name) {
        return Err(format!(
            "metadata.name {name:?} is not a valid Kubernetes name"
        ));
    }
    if let Some(ns) = value.pointer("/metadata/namespace") {
        match ns.as_str() {
            Some(s) if name_ok(s) && !s.contains('.') => {}
            _ => return Err(format!("metadata.namespace {ns} is not a valid namespace")),
        }
    }
    for field in ["labels", "annotations"] {
        if let Some(m) = value.pointer(&format!("/metadata/{field}")) {
            let ok = m
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string));
            if !ok {
                return Err(format!(
                    "metadata.{field} must map strings to strings (quote numbers and booleans)"
                ));
            }
        }
    }
    Ok(())
}

/// Parses and validates every object of a directory. All problems are
/// reported at once; on any problem nothing is returned.
pub fn render(files: &[File]) -> Result<Vec<Object>, Vec<Problem>> {
    let mut objects = vec![];
    let mut problems = vec![];
    for file in files.iter().filter(|f| counts(&f.path)) {
        let text = match std::str::from_utf8(&file.data) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem {
                    source: file.path.clone(),
                    object: String::new(),
                    message: format!("not UTF-8: {e}"),
                });
                continue;
            }
        };
        let docs = if file.path.ends_with(".json") {
            vec![text.to_string()]
        } else {
            documents(text)
        };
        for (i, doc) in docs.iter().enumerate() {
            let source = format!("{}#{}", file.path, i + 1);
            if doc.len() > MAX_DOCUMENT_BYTES {
                problems.push(Problem {
                    source,
                    object: String::new(),
                    message: format!(
                        "the document is {} bytes, over the {MAX_DOCUMENT_BYTES} bytes the API server accepts for one object",
                        doc.len()
                    ),
                });
                continue;
            }
            let parsed: Result<Value, String> = if file.path.ends_with(".json") {
                serde_json::from_str(doc).map_err(|e| e.to_string())
            } else if doc
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            {
                Ok(Value::Null)
            } else {
                serde_saphyr::from_str::<Value>(doc).map_err(|e| e.to_string())
            };
            let value = match parsed {
                Ok(Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    problems.push(Problem {
                        source,
                        object: String::new(),
                        message: format!(
                            "invalid {}: {e}",
                            if file.path.ends_with(".json") {
                                "JSON"
                            } else {
                                "YAML"
                            }
                        ),
                    });
                    continue;
                }
            };
            let items = match value.get("kind").and_then(Value::as_str) {
                Some(k) if k == "List" || (k.ends_with("List") && value.get("items").is_some()) => {
                    value["items"].as_array().cloned().unwrap_or_default()
                }
                _ => vec![value],
            };
            for item in items {
                match check(&item) {
                    Ok(()) => objects.push(Object {
                        source: source.clone(),
                        value: item,
                    }),
                    Err(message) => problems.push(Problem {
                        object: item
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .map(|n| format!("{}/{n}", item["kind"].as_str().unwrap_or("?")))
                            .unwrap_or_default(),
                        source: source.clone(),
                        message,
                    }),
                }
            }
        }
    }
    // The same object twice is ambiguous.
    let mut seen: HashMap<ObjectRef, String> = HashMap::new();
    for o in &objects {
        if let Some(first) = seen.insert(o.reference(), o.source.clone()) {
            problems.push(Problem {
                source: o.source.clone(),
                object: o.reference().to_string(),
                message: format!("defined twice: also in {first}"),
            });
        }
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &str) -> File {
        File {
            path: path.into(),
            data: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn multi_document_yaml_json_and_hidden_files() {
        let objs = render(&[
            file("a.yaml", "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n"),
            file("sub/c.json", r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c"}}"#),
            file(".hidden/x.yaml", "not: [valid"),
            file("README.md", "# docs"),
        ])
        .unwrap();
        let names: Vec<_> = objs.iter().map(|o| (o.source.as_str(), o.name())).collect();
        assert_eq!(
            names,
            [("a.yaml#2", "a"), ("a.yaml#4", "b"), ("sub/c.json#1", "c")]
        );
    }

    #[test]
    fn an_oversized_document_is_named_and_not_parsed() {
        let big = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata:\n  x: \"{}\"\n",
            "y".repeat(MAX_DOCUMENT_BYTES)
        );
        let ok = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n";
        let err = render(&[file("a.yaml", &format!("{ok}---\n{big}"))]).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].source, "a.yaml#2");
        assert!(err[0].message.contains("over the"), "{err:?}");
    }

    #[test]
    fn problems_name_file_and_document() {
        let err = render(&[
            file(
                "ok.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
            ),
            file(
                "bad.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n---\nkind: [unclosed\n",
            ),
            file(
                "noname.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
            ),
            file(
                "dup.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
            ),
        ])
        .unwrap_err();
        let sources: Vec<_> = err.iter().map(|p| p.source.as_str()).collect();
        assert_eq!(
            sources,
            ["bad.yaml#2", "noname.yaml#1", "dup.yaml#1"],
            "{err:?}"
        );
        assert!(err[0].message.contains("invalid YAML"));
        assert!(err[2].message.contains("defined twice"), "{err:?}");
    }
}
