//! The images `images/build.sh` makes: each is its binary and exactly what
//! it needs, runs as non-root with no shell, and its binaries run from the
//! image's own root filesystem (chroot), not the host's.

use ferry_integration::harness::{kubectl, workspace_binary, workspace_root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Unpacks an OCI archive: the image config, and the root filesystem.
fn unpack(archive: &Path, into: &Path) -> (Value, PathBuf) {
    let layout = into.join("layout");
    let rootfs = into.join("rootfs");
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::create_dir_all(&rootfs).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&layout));
    let read =
        |p: PathBuf| -> Value { serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap() };
    let index = read(layout.join("index.json"));
    let manifest = read(blob(
        &layout,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ));
    let config = read(blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    for layer in manifest["layers"].as_array().unwrap() {
        run(Command::new("tar")
            .arg("--numeric-owner")
            .arg("-xzf")
            .arg(blob(&layout, layer["digest"].as_str().unwrap()))
            .arg("-C")
            .arg(&rootfs));
    }
    (config, rootfs)
}

/// Runs a program of the image inside its root filesystem, as `user`,
/// with the `/dev/null` a container runtime would give it.
fn inside(rootfs: &Path, user: &str, argv: &[&str]) -> String {
    // The program by its path in the image (nothing of the host's is found).
    let program = format!("/usr/local/bin/{}", argv[0]);
    let null = rootfs.join("dev/null");
    let out = if rustix::process::getuid().is_root() {
        if !null.exists() {
            std::fs::create_dir_all(rootfs.join("dev")).unwrap();
            run(Command::new("mknod")
                .arg("-m")
                .arg("666")
                .arg(&null)
                .args(["c", "1", "3"]));
        }
        run(Command::new("chroot")
            .arg(format!("--userspec={user}"))
            .arg(rootfs)
            .arg(program)
            .args(&argv[1..]))
    } else {
        // Unprivileged: a user and mount namespace of our own.
        let script = format!(
            "mkdir -p {r}/dev && touch {r}/dev/null && mount --bind /dev/null {r}/dev/null && exec chroot {r} \"$@\"",
            r = rootfs.display()
        );
        run(Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "sh",
                "-c",
                &script,
                "sh",
            ])
            .arg(program)
            .args(&argv[1..]))
    };
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn images_hold_their_binaries_and_what_they_need_and_run_as_non_root() {
    // The binaries the tests built (release images are made the same way).
    let agent = workspace_binary("ferry-agent", "ferry-agent");
    workspace_binary("ferry-coordinator", "ferry");
    let bin_dir = agent.parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    run(Command::new(workspace_root().join("images/build.sh"))
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--out")
        .arg(&out)
        .arg("--kubectl")
        .arg(kubectl())
        .arg("--storage")
        .arg(dir.path().join("storage")));
    let version = env!("CARGO_PKG_VERSION");

    for (name, entry, checks) in [
        (
            "ferry-agent",
            "ferry-agent",
            vec![
                (
                    vec!["ferry-agent", "--version"],
                    format!("ferry-agent {version}"),
                ),
                (
                    vec!["kubectl", "version", "--client"],
                    "Client Version".to_string(),
                ),
                (vec!["ssh", "-V"], "OpenSSH".to_string()),
            ],
        ),
        (
            "ferry",
            "ferry",
            vec![(vec!["ferry", "--version"], format!("ferry {version}"))],
        ),
    ] {
        let (config, rootfs) = unpack(
            &out.join(format!("{name}-{version}.oci.tar")),
            &dir.path().join(name),
        );
        let c = &config["config"];
        assert_eq!(c["User"], "65532:65532", "{name}: {config}");
        assert_eq!(
            c["Entrypoint"],
            serde_json::json!([format!("/usr/local/bin/{entry}")]),
            "{name}"
        );
        assert_eq!(config["os"], "linux");
        for shell in ["bin/sh", "bin/bash", "usr/bin/sh", "bin/busybox"] {
            assert!(!rootfs.join(shell).exists(), "{name} has a shell: {shell}");
        }
        assert!(
            rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file(),
            "{name}"
        );
        for (argv, expected) in checks {
            let said = inside(&rootfs, "65532:65532", &argv);
            assert!(said.contains(&expected), "{name} {argv:?}: {said}");
        }
    }
}
