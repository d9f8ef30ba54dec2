//! Commit and tag signatures made by the real tools (`git commit -S` with
//! `ssh-keygen` keys and with `gpg`), checked by `verify::Policy`: each way a
//! commit can fail has its own answer.
#![cfg(feature = "verify")]

use ferry_proto::Commit;
use ferry_proto::verify::{Mode, Policy, Refused};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository, SSH keys and a GnuPG home of its own.
struct Lab {
    dir: PathBuf,
    repo: PathBuf,
    gnupg: PathBuf,
}

impl Lab {
    fn new(dir: &Path) -> Lab {
        let repo = dir.join("repo");
        let gnupg = dir.join("gnupg");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::create_dir_all(&gnupg).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let lab = Lab {
            dir: dir.to_path_buf(),
            repo,
            gnupg,
        };
        lab.git(&["init", "-q", "-b", "main"]);
        lab
    }

    fn git(&self, args: &[&str]) -> String {
        run(Command::new("git")
            .current_dir(&self.repo)
            .env("GNUPGHOME", &self.gnupg)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args(["-c", "user.name=Tester", "-c", "user.email=t@example.com"])
            .args(args))
    }

    fn gpg(&self, args: &[&str]) -> String {
        run(Command::new("gpg")
            .env("GNUPGHOME", &self.gnupg)
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args))
    }

    fn ssh_key(&self, name: &str) -> (PathBuf, String) {
        let path = self.dir.join(name);
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path));
        let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        (path, public.trim().to_string())
    }

    /// A gpg key (optionally made at a faked time); its fingerprint.
    fn gpg_key(&self, uid: &str, faked: Option<&str>) -> String {
        let mut args = vec![];
        if let Some(t) = faked {
            args.extend(["--faked-system-time", t]);
        }
        args.extend(["--quick-gen-key", uid, "ed25519", "sign", "1y"]);
        self.gpg(&args);
        let listing = self.gpg(&["--with-colons", "--list-keys", uid]);
        listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .map(|l| l.trim_matches(':').to_string())
            .unwrap()
    }

    fn commit(&self, file: &str, sign: &[&str]) -> Commit {
        std::fs::write(self.repo.join(file), file).unwrap();
        self.git(&["add", file]);
        let mut args = sign.to_vec();
        args.extend(["commit", "-q", "-m", file]);
        if !sign.is_empty() {
            args.push("-S");
        }
        self.git(&args);
        Commit::parse(&self.git(&["rev-parse", "HEAD"])).unwrap()
    }

    fn object(&self, kind: &str, id: &str) -> Vec<u8> {
        Command::new("git")
            .current_dir(&self.repo)
            .args(["cat-file", kind, id])
            .output()
            .unwrap()
            .stdout
    }

    /// A new object from `data` (a forged commit); its id.
    fn write_commit(&self, data: &[u8]) -> Commit {
        let path = self.dir.join("forged");
        std::fs::write(&path, data).unwrap();
        let id = self.git(&["hash-object", "-t", "commit", "-w", path.to_str().unwrap()]);
        Commit::parse(&id).unwrap()
    }
}

fn ssh_sign(key: &Path) -> Vec<String> {
    vec![
        "-c".into(),
        "gpg.format=ssh".into(),
        "-c".into(),
        format!("user.signingkey={}", key.display()),
    ]
}

#[test]
fn every_way_a_commit_fails_has_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new(dir.path());
    let (trusted, trusted_pub) = lab.ssh_key("alice");
    let (stranger, _) = lab.ssh_key("mallory");
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join("allowed_signers"),
        format!("alice@example.com namespaces=\"git\" {trusted_pub}\n"),
    )
    .unwrap();

    // OpenPGP: a good key, one that expired, one that was revoked.
    let good = lab.gpg_key("Gina <gina@example.com>", None);
    let old = lab.gpg_key("Olga <olga@example.com>", Some("20200101T000000"));
    let gone = lab.gpg_key("Rita <rita@example.com>", None);
    let old_program = dir.path().join("gpg-2020");
    std::fs::write(
        &old_program,
        "#!/bin/sh\nexec gpg --faked-system-time 20200601T000000 \"$@\"\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&old_program, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let s = |v: Vec<String>| v;
    fn as_refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let by_alice = s(ssh_sign(&trusted));
    let by_mallory = s(ssh_sign(&stranger));
    let unsigned = lab.commit("unsigned", &[]);
    let alice = lab.commit("alice", &as_refs(&by_alice));
    let mallory = lab.commit("mallory", &as_refs(&by_mallory));
    let gina_cfg = vec!["-c".to_string(), format!("user.signingkey={good}")];
    let gina = lab.commit("gina", &as_refs(&gina_cfg));
    let olga_cfg = vec![
        "-c".to_string(),
        format!("user.signingkey={old}"),
        "-c".to_string(),
        format!("gpg.program={}", old_program.display()),
    ];
    let olga = lab.commit("olga", &as_refs(&olga_cfg));
    let rita_cfg = vec!["-c".to_string(), format!("user.signingkey={gone}")];
    let rita = lab.commit("rita", &as_refs(&rita_cfg));
    // Rita's key is revoked after it signed (the certificate gpg made).
    let rev = lab.gnupg.join(format!("openpgp-revocs.d/{gone}.rev"));
    let cert = std::fs::read_to_string(&rev)
        .unwrap()
        .replace(":-----BEGIN", "-----BEGIN");
    let cert_file = dir.path().join("rita.rev");
    std::fs::write(&cert_file, cert).unwrap();
    lab.gpg(&["--import", cert_file.to_str().unwrap()]);
    for (name, fpr) in [("gina", &good), ("olga", &old), ("rita", &gone)] {
        let armored = lab.gpg(&["--armor", "--export", fpr]);
        std::fs::write(keys.join(format!("{name}.asc")), armored).unwrap();
    }

    let policy = Policy::load(&keys, Mode::Commit).unwrap();
    assert_eq!(policy.keys(), 4);
    let verdict = |c: &Commit| policy.verify_commit(c, &lab.object("commit", c.as_str()));

    let signer = verdict(&alice).unwrap();
    assert_eq!(signer.kind, "SSH");
    assert!(signer.fingerprint.starts_with("SHA256:"), "{signer}");
    assert_eq!(signer.who, "alice@example.com");
    let signer = verdict(&gina).unwrap();
    assert_eq!(signer.kind, "OpenPGP");
    assert_eq!(signer.fingerprint, good);
    assert!(signer.who.contains("gina@example.com"), "{signer}");

    let e = verdict(&unsigned).unwrap_err();
    assert!(matches!(e, Refused::NotSigned { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!("commit {} is not signed", unsigned.short())
    );
    let e = verdict(&mallory).unwrap_err();
    assert!(
        matches!(&e, Refused::Untrusted { key, .. } if key.starts_with("SHA256:")),
        "{e}"
    );
    let e = verdict(&olga).unwrap_err();
    assert!(matches!(e, Refused::Expired { .. }), "{e}");
    let e = verdict(&rita).unwrap_err();
    assert!(matches!(e, Refused::Revoked { .. }), "{e}");

    // A signature with one character changed.
    let data = lab.object("commit", alice.as_str());
    let text = String::from_utf8(data.clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(' ') && l.len() > 40 && !l.contains("-----"))
        .unwrap();
    let flipped: String = line
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 10 {
                if c == 'A' { 'B' } else { 'A' }
            } else {
                c
            }
        })
        .collect();
    let tampered = lab.write_commit(text.replacen(line, &flipped, 1).as_bytes());
    let e = verdict(&tampered).unwrap_err();
    assert!(matches!(e, Refused::BadSignature { .. }), "{e}");

    // Alice's signature over another tree (the unsigned commit's).
    let other_tree = lab.git(&["rev-parse", &format!("{}^{{tree}}", unsigned.as_str())]);
    let own_tree = lab.git(&["rev-parse", &format!("{}^{{tree}}", alice.as_str())]);
    let swapped = lab.write_commit(text.replacen(&own_tree, &other_tree, 1).as_bytes());
    let e = verdict(&swapped).unwrap_err();
    assert!(matches!(e, Refused::BadSignature { .. }), "{e}");

    // An empty key directory trusts nothing.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let none = Policy::load(&empty, Mode::Commit).unwrap();
    assert!(matches!(
        none.verify_commit(&alice, &data).unwrap_err(),
        Refused::Untrusted { .. }
    ));

    // Tag mode: the unsigned commit, named by a tag Alice signed.
    let mut args = as_refs(&by_alice);
    args.extend(["tag", "-s", "-m", "release", "v1", unsigned.as_str()]);
    lab.git(&args);
    lab.git(&["tag", "-a", "-m", "unsigned", "v0", unsigned.as_str()]);
    let tag = |name: &str| (name.to_string(), lab.object("tag", name));
    let tags = Policy::load(&keys, Mode::Tag).unwrap();
    let signer = tags
        .verify_tags(&unsigned, &[tag("v0"), tag("v1")])
        .unwrap();
    assert_eq!(signer.tag.as_deref(), Some("v1"));
    let e = tags.verify_tags(&unsigned, &[tag("v0")]).unwrap_err();
    assert!(e.to_string().contains("tag v0"), "{e}");
    assert!(e.to_string().contains("is not signed"), "{e}");
    // A signed tag of another commit does not vouch for this one.
    let e = tags.verify_tags(&alice, &[tag("v1")]).unwrap_err();
    assert!(matches!(e, Refused::NoSignedTag { .. }), "{e}");
}

#[test]
fn unusable_key_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("allowed_signers"), "bob only-a-name\n").unwrap();
    let e = Policy::load(dir.path(), Mode::Commit).unwrap_err();
    assert!(e.to_string().contains("allowed_signers: line 1"), "{e}");
    std::fs::write(
        dir.path().join("allowed_signers"),
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot a key\n-----END PGP PUBLIC KEY BLOCK-----\n",
    )
    .unwrap();
    let e = Policy::load(dir.path(), Mode::Commit).unwrap_err();
    assert!(e.to_string().contains("OpenPGP"), "{e}");
    let missing = Policy::load(&dir.path().join("nope"), Mode::Commit).unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
}
