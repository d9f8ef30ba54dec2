//! `ferry store`: the coordinator's database, handled on its machine.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand, Debug)]
pub enum StoreCommand {
    /// Copy the SQLite store to a file while the coordinator runs (SQLite's
    /// online backup API: a consistent snapshot, writers never wait long).
    /// Restore: stop the coordinator, put the copy at DATA_DIR/ferry.db
    /// (removing ferry.db-wal and ferry.db-shm), start it. On PostgreSQL,
    /// use its own tools (pg_dump, or base backups with WAL archiving).
    Backup {
        /// The coordinator's data dir (holding ferry.db).
        #[arg(long, env = "FERRY_DATA_DIR")]
        data_dir: PathBuf,
        /// The file to write (refused if it exists).
        #[arg(long)]
        to: PathBuf,
    },
}

pub async fn execute(cmd: &StoreCommand) -> Result<String> {
    match cmd {
        StoreCommand::Backup { data_dir, to } => {
            let (from, to) = (data_dir.join("ferry.db"), to.clone());
            tokio::task::spawn_blocking(move || backup(&from, &to)).await?
        }
    }
}

/// Copies the database at `from` to a new file `to`, a few pages at a
/// time, so the coordinator keeps writing meanwhile.
fn backup(from: &Path, to: &Path) -> Result<String> {
    if !from.exists() {
        bail!("no store at {} (is --data-dir right?)", from.display());
    }
    if to.exists() {
        bail!("{} exists already: give a new file", to.display());
    }
    let src = rusqlite::Connection::open_with_flags(
        from,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", from.display()))?;
    let written = (|| -> Result<()> {
        let mut dst = rusqlite::Connection::open(to)?;
        let copy = rusqlite::backup::Backup::new(&src, &mut dst)?;
        copy.run_to_completion(256, std::time::Duration::from_millis(10), None)?;
        drop(copy);
        let check: String = dst.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if check != "ok" {
            bail!("the copy fails its integrity check: {check}");
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(to);
        return Err(e.context(format!("backing up {} to {}", from.display(), to.display())));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))?;
    }
    let size = std::fs::metadata(to)?.len();
    Ok(format!(
        "backed up {} to {} ({} KiB)\n",
        from.display(),
        to.display(),
        size.div_ceil(1024)
    ))
}
