//! A real SSH Git server for tests: Debian's OpenSSH `sshd` on 127.0.0.1
//! with its own host key, accepting one generated client key. Git runs as
//! it does on any SSH Git host: `git-upload-pack` through the login shell.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's openssh-server puts the daemon.
pub const SSHD: &str = "/usr/sbin/sshd";

/// A running `sshd`; stops when dropped.
pub struct SshGit {
    pub port: u16,
    /// The login user (the user the tests run as).
    pub user: String,
    /// The client's private key (OpenSSH format) that the server accepts.
    pub client_key: Vec<u8>,
    /// A known_hosts line for this server's host key.
    pub known_hosts: String,
    child: Child,
}

impl Drop for SshGit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ferry-test", "-f"])
        .arg(path)
        .output()
        .context("running ssh-keygen (Debian package openssh-client)")?;
    if !out.status.success() {
        bail!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl SshGit {
    /// Starts sshd with its files below `dir`.
    pub fn start(dir: &Path) -> Result<SshGit> {
        if !Path::new(SSHD).exists() {
            bail!("{SSHD} is missing: install Debian's openssh-server (./test.sh does)");
        }
        std::fs::create_dir_all(dir)?;
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        keygen(&host_key)?;
        keygen(&client_key)?;
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized)?;
        let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
            .trim()
            .to_string();
        // sshd wants its privilege separation directory when run as root.
        let _ = std::fs::create_dir_all("/run/sshd");
        let host_pub = std::fs::read_to_string(host_key.with_extension("pub"))?;
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        for _ in 0..20 {
            let port = crate::world::free_port()?;
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                     StrictModes no\nPermitRootLogin prohibit-password\nPidFile {}\n\
                     LogLevel ERROR\n",
                    host_key.display(),
                    authorized.display(),
                    dir.join("sshd.pid").display(),
                ),
            )?;
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting sshd")?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(SshGit {
                        port,
                        user,
                        client_key: std::fs::read(&client_key)?,
                        known_hosts: format!(
                            "[127.0.0.1]:{port} {} {}\n",
                            host_pub[0], host_pub[1]
                        ),
                        child,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!("sshd did not start")
    }

    /// The ssh:// URL of a repository at an absolute path.
    pub fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.display()
        )
    }
}

/// A directory laid out as the agent's Git secret (`--git-secret-dir`).
pub fn write_secret(dir: &Path, files: &[(&str, &[u8])]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for (name, data) in files {
        std::fs::write(dir.join(name), data)?;
    }
    Ok(dir.to_path_buf())
}
