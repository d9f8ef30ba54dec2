//! Helpers for tests and tools: polling with a deadline, the real `kubectl`,
//! kube-rs clients for emulators.

use kube_emulator::Emulator;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

/// How long `eventually` waits: `FERRY_TEST_PATIENCE_SECS`, default 30.
pub fn patience() -> Duration {
    std::env::var("FERRY_TEST_PATIENCE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs)
}

/// Polls `check` until it yields a value, or panics naming `what` once
/// [`patience`] runs out. Never a fixed sleep.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {:?} waiting for {what}", patience());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The workspace root (the folder with the root Cargo.toml).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// A tool the test command installs into `.venv`: `FERRY_<NAME>` if set,
/// else the venv's, else PATH's.
pub fn tool(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("FERRY_{}", name.to_uppercase())) {
        return p.into();
    }
    let venv = workspace_root().join(".venv/bin").join(name);
    if venv.exists() {
        return venv;
    }
    name.into()
}

/// The `helm template`-compatible command the tests give agents: Helm's
/// own engine through `integration/helm/helm-template.py` (no Helm binary
/// can be installed here).
pub fn helm_template() -> Vec<String> {
    let root = workspace_root();
    vec![
        root.join(".venv/bin/python").display().to_string(),
        root.join("integration/helm/helm-template.py")
            .display()
            .to_string(),
    ]
}

/// A binary of this workspace (`package`'s `name`), built once per test
/// process with the profile the tests were built with, so a test never runs
/// a stale one. Built as `./test.sh` builds them (every binary of the
/// workspace, whose features unify as they do there): after it, this is a
/// no-op. Building one package alone would unify features differently and
/// rebuild its dependencies, a minute or more each on a clean machine.
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("tests run from target/<profile>/deps")
        .to_path_buf();
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !*built {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "--locked",
            "--quiet",
            "--workspace",
            "--bins",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(
            status.success(),
            "cargo build --workspace --bins failed (wanted {package}'s {name})"
        );
        *built = true;
    }
    dir.join(name)
}

/// The real `kubectl`.
pub fn kubectl() -> PathBuf {
    tool("kubectl")
}

/// Installs the process-wide rustls provider (aws-lc-rs) once.
pub fn init_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A kube-rs client for an emulator, built from its kubeconfig. kube's own
/// retries of 429/503 are off, so tests see exactly what the server answered.
pub async fn kube_client(emu: &Emulator) -> kube::Client {
    init_crypto();
    let kc = kube::config::Kubeconfig::from_yaml(&emu.kubeconfig()).expect("emulator kubeconfig");
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kube config");
    cfg.default_retry = false;
    kube::Client::try_from(cfg).expect("kube client")
}

/// Logs for tests and tools, from `FERRY_LOG`.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("FERRY_LOG"))
            .with_test_writer()
            .try_init();
    });
}

/// A plain HTTP GET (metrics and probe ports): the status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = vec![];
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {head:?}")))?;
    Ok((code, body.to_string()))
}

/// `promtool check metrics` on an exposition: `Err` with its complaints.
pub fn promtool_check(exposition: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running promtool (./test.sh installs it): {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(exposition.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Helm's engine and kubernetes-validate, through `integration/helm/chart.py`
/// (run by the `.venv` Python `./test.sh` provisions).
pub mod helm {
    use serde_json::Value;
    use std::path::PathBuf;

    fn run(args: &[&str], input: &Value) -> Result<Value, String> {
        use std::io::Write;
        let python = super::workspace_root().join(".venv/bin/python");
        let script = super::workspace_root().join("integration/helm/chart.py");
        let mut child = std::process::Command::new(&python)
            .arg(&script)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {} (./test.sh makes it): {e}", python.display()))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("chart.py said: {e}"))
    }

    /// A chart of `helm/`.
    pub fn chart(name: &str) -> PathBuf {
        super::workspace_root().join("helm").join(name)
    }

    /// What `helm install NAME CHART -n NAMESPACE -f values` would create:
    /// the objects and NOTES.txt; `Err` is Helm's refusal, as it says it.
    pub fn render(
        chart: &str,
        release: &str,
        namespace: &str,
        values: &Value,
    ) -> Result<(Vec<Value>, String), String> {
        let path = self::chart(chart);
        let out = run(
            &["render", path.to_str().expect("utf-8"), release, namespace],
            values,
        )?;
        let objects = out["objects"]
            .as_array()
            .map(|a| a.iter().map(|o| o["object"].clone()).collect())
            .unwrap_or_default();
        Ok((objects, out["notes"].as_str().unwrap_or("").to_string()))
    }

    /// `helm lint --strict`: its error messages (infos and warnings left out).
    pub fn lint(chart: &str, values: &Value) -> Result<Vec<String>, String> {
        let path = self::chart(chart);
        let report = run(&["lint", path.to_str().expect("utf-8")], values)?;
        let mut errors: Vec<String> = report["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(messages) = report["messages"].as_array() {
            errors.extend(
                messages
                    .iter()
                    .filter(|m| m["severity"].as_i64().unwrap_or(0) >= 3)
                    .map(|m| m.to_string()),
            );
        }
        Ok(errors)
    }

    /// kubernetes-validate, strict (unknown fields too), against `version`.
    pub fn validate(version: &str, objects: &[Value]) -> Result<Vec<String>, String> {
        let out = run(&["validate", version], &Value::Array(objects.to_vec()))?;
        Ok(out["problems"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }
}
