//! Helm charts as sources. A cluster directory with a `Chart.yaml` at its
//! root is a chart; one with a `ferry.yaml` names a chart anywhere in the
//! repository, the release, values files and per-cluster values:
//!
//! ```yaml
//! helm:
//!   chart: /charts/addons          # "/…": from the repository root; else from here
//!   releaseName: addons            # default: the chart's name
//!   namespace: addons              # default: "default"
//!   valuesFiles: [values.yaml, "/values/{label.region}.yaml"]
//!   values: {cluster: "{cluster}", region: "{label.region}"}
//!   ignoreHooks: [pre-delete]      # hooks dropped on purpose
//!   createNamespace: true          # apply the namespace too (default: false)
//! ```
//!
//! The whole tree at the commit is exported (no symbolic links) and an
//! external `helm template`-compatible command renders it: `COMMAND template
//! NAME CHART --namespace NS --include-crds -f FILE…` (the inline values
//! last). Each rendered object keeps the template it came from, so errors
//! name it. Objects without a namespace get the release's.
//!
//! Hooks are handled, never dropped silently: `pre-install`/`pre-upgrade`
//! objects are applied in waves before the chart's first (one per
//! `helm.sh/hook-weight`, lowest first), `post-install`/`post-upgrade` in
//! waves after its last; test hooks are left out (they belong to `helm
//! test`); delete and rollback hooks are an error naming the object unless
//! `ignoreHooks` lists them. CRDs from the chart's `crds/` go in the very
//! first wave. `helm.sh/resource-policy: keep` means Ferry never prunes it.

use crate::plan::{PRUNE_ANNOTATION, WAVE_ANNOTATION};
use crate::render::{self, Object, Problem};
use crate::source::File;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::Path;

/// The file that names a chart, a release and its values.
pub const FERRY_FILE: &str = "ferry.yaml";
const HOOK: &str = "helm.sh/hook";
const HOOK_WEIGHT: &str = "helm.sh/hook-weight";
const RESOURCE_POLICY: &str = "helm.sh/resource-policy";

/// Whether a cluster's directory is a Helm source.
pub fn is_chart(files: &[File]) -> bool {
    files
        .iter()
        .any(|f| f.path == FERRY_FILE || f.path == "Chart.yaml")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FerryFile {
    helm: Spec,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    chart: Option<String>,
    #[serde(default)]
    release_name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    values_files: Vec<String>,
    #[serde(default)]
    values: Option<Value>,
    #[serde(default)]
    ignore_hooks: Vec<String>,
    #[serde(default)]
    create_namespace: bool,
}

/// A chart release, settled for one cluster.
#[derive(Debug, PartialEq)]
pub struct Release {
    /// The chart's directory, from the repository root.
    pub chart: String,
    pub name: String,
    pub namespace: String,
    /// From the repository root.
    pub values_files: Vec<String>,
    /// Inline values, placeholders replaced.
    pub values: Option<Value>,
    pub ignore_hooks: BTreeSet<String>,
    /// Apply the release's Namespace too (first), as `helm install
    /// --create-namespace` would create it.
    pub create_namespace: bool,
    /// Where the release was read from (`ferry.yaml` or `Chart.yaml`).
    pub source: String,
}

/// Who the release is rendered for.
pub struct For<'a> {
    pub cluster: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

fn problem(source: &str, message: String) -> Problem {
    Problem {
        source: source.to_string(),
        object: String::new(),
        message,
    }
}

/// `rel` from `dir` (both from the repository root); `/x` is from the root.
/// `None` when it leaves the repository.
fn resolve(dir: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = match rel.strip_prefix('/') {
        Some(_) => vec![],
        None => dir.split('/').filter(|s| !s.is_empty()).collect(),
    };
    for seg in rel.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

/// Replaces `{cluster}` and `{label.KEY}` in every string of `v` (strings
/// holding `{{`, Go templates for the chart's `tpl`, are left alone).
fn substitute(v: &mut Value, at: &str, who: &For) -> Result<(), String> {
    match v {
        Value::String(s) if s.contains('{') && !s.contains("{{") => {
            *s = ferry_proto::substitute(s, who.cluster, who.labels)
                .map_err(|e| format!("values.{at}: {e}"))?;
        }
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                let at = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                substitute(v, &at, who)?;
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                substitute(v, &format!("{at}[{i}]"), who)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// DNS-1123 subdomain of at most `max` characters (Helm's rule for
/// release names is 53).
fn dns_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

const HOOKS_SUPPORTED: [&str; 4] = ["pre-install", "pre-upgrade", "post-install", "post-upgrade"];
const HOOKS_TEST: [&str; 3] = ["test", "test-success", "test-failure"];
const HOOKS_UNSUPPORTED: [&str; 4] = ["pre-delete", "post-delete", "pre-rollback", "post-rollback"];

/// Reads the release of a directory: its `ferry.yaml`, or its `Chart.yaml`
/// alone. `tree` is the exported repository (the chart's name is read
/// there when no release name is given).
pub fn release(files: &[File], dir: &str, tree: &Path, who: &For) -> Result<Release, Problem> {
    let here = |p: &str| resolve("", &format!("{dir}/{p}")).unwrap_or_default();
    let source = here(FERRY_FILE);
    let spec = match files.iter().find(|f| f.path == FERRY_FILE) {
        None => Spec::default(),
        Some(f) => {
            let text = std::str::from_utf8(&f.data)
                .map_err(|e| problem(&source, format!("not UTF-8: {e}")))?;
            serde_saphyr::from_str::<FerryFile>(text)
                .map_err(|e| problem(&source, e.to_string()))?
                .helm
        }
    };
    let bad = |m: String| problem(&source, m);
    let chart = match &spec.chart {
        None => resolve(dir, ".").unwrap_or_default(),
        Some(c) => {
            resolve(dir, c).ok_or_else(|| bad(format!("helm.chart {c:?} leaves the repository")))?
        }
    };
    let chart_yaml = tree.join(&chart).join("Chart.yaml");
    let meta = std::fs::read_to_string(&chart_yaml).map_err(|_| {
        bad(format!(
            "helm.chart: no Chart.yaml in {:?} at this commit",
            if chart.is_empty() { "/" } else { &chart }
        ))
    })?;
    let name = match spec.release_name {
        Some(n) => n,
        None => {
            #[derive(Deserialize)]
            struct Meta {
                name: String,
            }
            serde_saphyr::from_str::<Meta>(&meta)
                .map_err(|e| problem(&format!("{chart}/Chart.yaml"), e.to_string()))?
                .name
        }
    };
    if !dns_name(&name, 53) {
        return Err(bad(format!(
            "release name {name:?} must be at most 53 lowercase letters, digits, '-' and '.' (Helm's rule)"
        )));
    }
    let namespace = spec.namespace.unwrap_or_else(|| "default".into());
    if !dns_name(&namespace, 63) || namespace.contains('.') {
        return Err(bad(format!(
            "helm.namespace {namespace:?} is not a namespace name"
        )));
    }
    let mut values_files = vec![];
    for f in &spec.values_files {
        let named = ferry_proto::substitute(f, who.cluster, who.labels)
            .map_err(|e| bad(format!("helm.valuesFiles: {e}")))?;
        let path = resolve(dir, &named)
            .ok_or_else(|| bad(format!("helm.valuesFiles: {named:?} leaves the repository")))?;
        if !tree.join(&path).is_file() {
            return Err(bad(format!(
                "helm.valuesFiles: {named:?} ({path}) does not exist at this commit"
            )));
        }
        values_files.push(path);
    }
    let mut values = spec.values;
    if let Some(v) = &mut values {
        if !v.is_object() {
            return Err(bad("helm.values must be a map".into()));
        }
        substitute(v, "", who).map_err(|e| bad(format!("helm.{e}")))?;
    }
    let mut ignore_hooks = BTreeSet::new();
    for h in spec.ignore_hooks {
        if !HOOKS_UNSUPPORTED.contains(&h.as_str()) && !HOOKS_TEST.contains(&h.as_str()) {
            return Err(bad(format!(
                "helm.ignoreHooks: {h:?} is not a hook Ferry leaves out (those are {})",
                HOOKS_UNSUPPORTED.join(", ")
            )));
        }
        ignore_hooks.insert(h);
    }
    Ok(Release {
        chart,
        name,
        namespace,
        values_files,
        values,
        ignore_hooks,
        create_namespace: spec.create_namespace,
        source: if files.iter().any(|f| f.path == FERRY_FILE) {
            source
        } else {
            here("Chart.yaml")
        },
    })
}

/// Renders `release` from the exported `tree` with `command` (a `helm
/// template`-compatible command) into objects, hooks placed in waves.
pub fn render(
    command: &[String],
    tree: &Path,
    release: &Release,
) -> Result<Vec<Object>, Vec<Problem>> {
    let label = format!("helm template {} {}", release.name, release.chart);
    let one = |m: String| vec![problem(&label, m)];
    let home = tempfile::tempdir().map_err(|e| one(e.to_string()))?;
    let mut args: Vec<OsString> = vec![
        "template".into(),
        release.name.clone().into(),
        tree.join(&release.chart).into(),
        "--namespace".into(),
        release.namespace.clone().into(),
        "--include-crds".into(),
    ];
    for f in &release.values_files {
        args.push("-f".into());
        args.push(tree.join(f).into());
    }
    if let Some(v) = &release.values {
        let inline = home.path().join("ferry-values.json");
        std::fs::write(&inline, v.to_string()).map_err(|e| one(e.to_string()))?;
        args.push("-f".into());
        args.push(inline.into());
    }
    // Helm keeps caches and settings under these: a scratch directory, so
    // a read-only root filesystem is fine and nothing leaks between runs.
    let env = [
        ("HELM_CACHE_HOME", home.path()),
        ("HELM_CONFIG_HOME", home.path()),
        ("HELM_DATA_HOME", home.path()),
        ("HOME", home.path()),
    ];
    let out = render::run_tool(command, &args, &env, "install helm, or set --helm")
        .map_err(|m| one(m.replace(&tree.display().to_string(), "")))?;
    let text = String::from_utf8(out).map_err(|e| one(format!("output is not UTF-8: {e}")))?;
    let objects = render::render(&by_template(&text, &label))?;
    place(objects, release)
}

/// Splits `helm template` output into one file per template (its `#
/// Source:` line), so each object's source names its template.
fn by_template(text: &str, label: &str) -> Vec<File> {
    let mut files: Vec<File> = vec![];
    let mut doc = String::new();
    let flush = |doc: &mut String, files: &mut Vec<File>| {
        let source = doc
            .lines()
            .find_map(|l| l.strip_prefix("# Source: "))
            .map(str::trim)
            .map(str::to_string);
        if doc.trim().is_empty() {
            doc.clear();
            return;
        }
        let mut path = source.unwrap_or_else(|| label.to_string());
        if !(path.ends_with(".yaml") || path.ends_with(".yml")) {
            path.push_str(".yaml");
        }
        match files.last_mut() {
            Some(f) if f.path == path => {
                f.data.extend_from_slice(b"---\n");
                f.data.extend_from_slice(doc.as_bytes());
            }
            _ => files.push(File {
                path,
                data: doc.clone().into_bytes(),
            }),
        }
        doc.clear();
    };
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            flush(&mut doc, &mut files);
        } else {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    flush(&mut doc, &mut files);
    files
}

fn annotation<'v>(o: &'v Object, key: &str) -> Option<&'v str> {
    o.value["metadata"]["annotations"][key].as_str()
}

fn annotate(o: &mut Object, key: &str, value: String) {
    let meta = o.value["metadata"].as_object_mut().expect("render checked");
    let a = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()));
    if !a.is_object() {
        *a = Value::Object(Default::default());
    }
    a[key] = Value::String(value);
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Pre,
    Main,
    Post,
}

/// Places hooks in waves, CRDs first, the namespace defaulted; refuses
/// hooks Ferry cannot honour.
fn place(objects: Vec<Object>, release: &Release) -> Result<Vec<Object>, Vec<Problem>> {
    let mut problems = vec![];
    let mut placed: Vec<(Phase, i64, Object)> = vec![];
    for mut o in objects {
        let meta = o.value["metadata"].as_object_mut().expect("render checked");
        meta.entry("namespace")
            .or_insert_with(|| Value::String(release.namespace.clone()));
        let fail = |m: String| Problem {
            source: o.source.clone(),
            object: o.reference().to_string(),
            message: m,
        };
        let hooks: Vec<String> = annotation(&o, HOOK)
            .map(|h| {
                h.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let mut kept = vec![];
        let mut refused = vec![];
        for h in &hooks {
            if HOOKS_SUPPORTED.contains(&h.as_str()) {
                kept.push(h.as_str());
            } else if HOOKS_TEST.contains(&h.as_str()) || release.ignore_hooks.contains(h) {
                // Left out on purpose: test hooks run with `helm test`;
                // the others are listed in ignoreHooks.
            } else if HOOKS_UNSUPPORTED.contains(&h.as_str()) {
                refused.push(h.as_str());
            } else {
                problems.push(fail(format!("unknown Helm hook {h:?}")));
            }
        }
        if !refused.is_empty() {
            problems.push(fail(format!(
                "Helm hook {} is not supported (Ferry never deletes or rolls back a release); list it in ferry.yaml's helm.ignoreHooks to leave this object out",
                refused.join(", ")
            )));
            continue;
        }
        if !hooks.is_empty() && kept.is_empty() {
            continue;
        }
        let pre = kept.iter().any(|h| h.starts_with("pre-"));
        let post = kept.iter().any(|h| h.starts_with("post-"));
        let phase = match (pre, post) {
            (true, true) => {
                problems.push(fail(
                    "a hook both before and after the release cannot be placed in one wave".into(),
                ));
                continue;
            }
            (true, false) => Phase::Pre,
            (false, true) => Phase::Post,
            (false, false) => Phase::Main,
        };
        let weight = match annotation(&o, HOOK_WEIGHT) {
            Some(w) if phase != Phase::Main => match w.trim().parse::<i64>() {
                Ok(w) => w,
                Err(_) => {
                    problems.push(fail(format!(
                        "{HOOK_WEIGHT} must be a whole number, not {w:?}"
                    )));
                    continue;
                }
            },
            _ => 0,
        };
        if annotation(&o, RESOURCE_POLICY) == Some("keep") {
            annotate(&mut o, PRUNE_ANNOTATION, "false".into());
        }
        placed.push((phase, weight, o));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let ns = &release.namespace;
    if release.create_namespace
        && !placed
            .iter()
            .any(|(_, _, o)| o.kind() == "Namespace" && o.name() == ns)
    {
        let o = Object {
            source: release.source.clone(),
            value: serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        };
        placed.push((Phase::Main, 0, o));
    }
    // The chart's own waves (an unreadable one is plan's to report).
    let wave =
        |o: &Object| annotation(o, WAVE_ANNOTATION).and_then(|w| w.trim().parse::<i64>().ok());
    let main: Vec<i64> = placed
        .iter()
        .filter(|(p, ..)| *p == Phase::Main)
        .map(|(_, _, o)| wave(o).unwrap_or(0))
        .collect();
    let lo = main.iter().copied().min().unwrap_or(0);
    let hi = main.iter().copied().max().unwrap_or(0);
    let weights = |phase: Phase| -> Vec<i64> {
        let w: BTreeSet<i64> = placed
            .iter()
            .filter(|(p, ..)| *p == phase)
            .map(|(_, w, _)| *w)
            .collect();
        w.into_iter().collect()
    };
    let (pre, post) = (weights(Phase::Pre), weights(Phase::Post));
    let first = lo - pre.len() as i64 - 1;
    let mut out = vec![];
    for (phase, weight, mut o) in placed {
        // CRDs of the chart's crds/ and the namespace it creates go first.
        let from_crds = (o.kind() == "CustomResourceDefinition" && o.source.contains("/crds/"))
            || (o.kind() == "Namespace" && o.source == release.source);
        let at = match phase {
            _ if from_crds => Some(first),
            Phase::Main => None,
            Phase::Pre => {
                let i = pre.iter().position(|w| *w == weight).expect("collected") as i64;
                Some(lo - pre.len() as i64 + i)
            }
            Phase::Post => {
                let i = post.iter().position(|w| *w == weight).expect("collected") as i64;
                Some(hi + 1 + i)
            }
        };
        if let Some(at) = at
            && (from_crds || wave(&o).is_none())
        {
            annotate(&mut o, WAVE_ANNOTATION, at.to_string());
        }
        out.push(o);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(source: &str, kind: &str, name: &str, annotations: Value) -> Object {
        Object {
            source: source.into(),
            value: json!({"apiVersion": "v1", "kind": kind,
                "metadata": {"name": name, "annotations": annotations}}),
        }
    }

    fn rel(ignore: &[&str]) -> Release {
        Release {
            chart: "charts/a".into(),
            name: "a".into(),
            namespace: "apps".into(),
            values_files: vec![],
            values: None,
            ignore_hooks: ignore.iter().map(|s| s.to_string()).collect(),
            create_namespace: true,
            source: "clusters/x/ferry.yaml".into(),
        }
    }

    fn waves(out: &[Object]) -> Vec<(String, Option<String>)> {
        out.iter()
            .map(|o| {
                (
                    o.name().to_string(),
                    annotation(o, WAVE_ANNOTATION).map(str::to_string),
                )
            })
            .collect()
    }

    #[test]
    fn hooks_go_before_and_after_the_chart_in_weight_order() {
        let out = place(
            vec![
                obj("a/templates/cm.yaml#1", "ConfigMap", "main", json!({})),
                obj(
                    "a/templates/late.yaml#1",
                    "ConfigMap",
                    "late",
                    json!({WAVE_ANNOTATION: "2"}),
                ),
                obj(
                    "a/templates/j.yaml#1",
                    "Job",
                    "migrate",
                    json!({HOOK: "pre-install,pre-upgrade", HOOK_WEIGHT: "5"}),
                ),
                obj(
                    "a/templates/j.yaml#2",
                    "Job",
                    "setup",
                    json!({HOOK: "pre-upgrade", HOOK_WEIGHT: "-1"}),
                ),
                obj(
                    "a/templates/p.yaml#1",
                    "Job",
                    "after",
                    json!({HOOK: "post-install"}),
                ),
                obj(
                    "a/templates/t.yaml#1",
                    "Pod",
                    "smoke",
                    json!({HOOK: "test"}),
                ),
                obj(
                    "a/crds/crd.yaml#1",
                    "CustomResourceDefinition",
                    "x.example.com",
                    json!({}),
                ),
            ],
            &rel(&[]),
        )
        .unwrap();
        assert_eq!(
            waves(&out),
            [
                ("main".to_string(), None),
                ("late".to_string(), Some("2".to_string())),
                ("migrate".to_string(), Some("-1".to_string())),
                ("setup".to_string(), Some("-2".to_string())),
                ("after".to_string(), Some("3".to_string())),
                ("x.example.com".to_string(), Some("-3".to_string())),
                ("apps".to_string(), Some("-3".to_string())),
            ]
        );
        // Namespaced or not is plan's call: every object gets the release's.
        assert_eq!(out[0].namespace(), Some("apps"));
    }

    #[test]
    fn unsupported_hooks_are_named_unless_ignored() {
        let cleanup = || {
            vec![
                obj(
                    "a/templates/cm.yaml#1",
                    "ConfigMap",
                    "main",
                    json!({RESOURCE_POLICY: "keep"}),
                ),
                obj(
                    "a/templates/c.yaml#1",
                    "Job",
                    "cleanup",
                    json!({HOOK: "pre-delete"}),
                ),
            ]
        };
        let e = place(cleanup(), &rel(&[])).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].object, "Job/apps/cleanup");
        assert!(
            e[0].message.contains("pre-delete is not supported"),
            "{}",
            e[0].message
        );
        assert!(e[0].message.contains("ignoreHooks"), "{}", e[0].message);
        let out = place(cleanup(), &rel(&["pre-delete"])).unwrap();
        assert_eq!(out.len(), 2, "the ConfigMap and the namespace");
        assert_eq!(annotation(&out[0], PRUNE_ANNOTATION), Some("false"));
        let e = place(
            vec![obj("x#1", "Job", "j", json!({HOOK: "pre-instal"}))],
            &rel(&[]),
        )
        .unwrap_err();
        assert!(e[0].message.contains("unknown Helm hook \"pre-instal\""));
    }

    #[test]
    fn paths_resolve_inside_the_repository() {
        assert_eq!(
            resolve("clusters/eu", "../../charts/a").as_deref(),
            Some("charts/a")
        );
        assert_eq!(
            resolve("clusters/eu", "/charts/a").as_deref(),
            Some("charts/a")
        );
        assert_eq!(resolve("clusters/eu", ".").as_deref(), Some("clusters/eu"));
        assert_eq!(resolve("clusters/eu", "../../../etc"), None);
        assert_eq!(resolve("", "/../x"), None);
    }

    #[test]
    fn values_take_the_cluster_and_its_labels() {
        let labels: BTreeMap<_, _> = [("region".to_string(), "eu".to_string())].into();
        let who = For {
            cluster: "c1",
            labels: &labels,
        };
        let mut v = json!({"a": "{cluster}-{label.region}", "b": ["{label.region}"],
            "tpl": "{{ .Release.Name }}", "n": 3});
        substitute(&mut v, "", &who).unwrap();
        assert_eq!(
            v,
            json!({"a": "c1-eu", "b": ["eu"], "tpl": "{{ .Release.Name }}", "n": 3})
        );
        let mut v = json!({"x": {"y": "{label.zone}"}});
        let e = substitute(&mut v, "", &who).unwrap_err();
        assert!(e.starts_with("values.x.y:") && e.contains("zone"), "{e}");
    }

    #[test]
    fn output_is_split_by_template() {
        let text = "---\n# Source: a/crds/crd.yaml\nkind: A\n---\n# Source: a/templates/x.yaml\nkind: B\n---\n# Source: a/templates/x.yaml\nkind: C\n";
        let files = by_template(text, "helm template a");
        let paths: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a/crds/crd.yaml", "a/templates/x.yaml"]);
        assert_eq!(
            String::from_utf8_lossy(&files[1].data),
            "# Source: a/templates/x.yaml\nkind: B\n---\n# Source: a/templates/x.yaml\nkind: C\n"
        );
    }
}
