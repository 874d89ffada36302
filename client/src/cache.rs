//! [`ShareCache`]: the shared values this agent keeps for its tasks, one file each, which its
//! workers map instead of receiving the bytes through their pipes.
//!
//! The server keeps the books (what is here, within `--cache-size`, and what may go): the agent
//! writes what it is sent and removes what it is told to forget. The files live in a directory
//! of this agent's own on a memory file system (`/dev/shm` where there is one), so a value is
//! in the machine's memory once however many workers map it; the directory goes with the
//! agent's work for its server.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use blitzen_protocol::cluster::SharePiece;
use tracing::{debug, warn};

/// The files of the shared values this agent holds.
#[derive(Debug)]
pub(crate) struct ShareCache {
    dir: PathBuf,
}

impl ShareCache {
    /// A new, empty cache directory.
    pub(crate) fn create() -> io::Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() { shm } else { std::env::temp_dir() };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("blitzen-cache-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Where value `key` is.
    pub(crate) fn path(&self, key: u64) -> PathBuf {
        self.dir.join(key.to_string())
    }

    /// Writes a piece of a value (off the runtime's thread: a piece is up to 16 MiB). The
    /// pieces go to a file of their own, renamed into place once whole: a worker that maps the
    /// value (a server that restarted may send it again) keeps the file it mapped, never sees
    /// one half written or cut short.
    pub(crate) async fn write(&self, piece: SharePiece) -> io::Result<()> {
        let path = self.path(piece.id);
        let arriving = self.dir.join(format!("{}.arriving", piece.id));
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(piece.offset == 0)
                .open(&arriving)?;
            file.write_all_at(&piece.bytes, piece.offset)?;
            if piece.offset + piece.bytes.len() as u64 >= piece.total {
                std::fs::rename(&arriving, &path)?;
                debug!(key = piece.id, bytes = piece.total, "shared value cached");
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Forgets values `keys` (tasks that mapped one keep their mapping).
    pub(crate) fn forget(&self, keys: Vec<u64>) {
        let paths: Vec<PathBuf> = keys.into_iter().map(|k| self.path(k)).collect();
        tokio::task::spawn_blocking(move || {
            for path in paths {
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    warn!(path = %path.display(), error = %e, "cannot remove a cached shared value");
                }
            }
        });
    }
}

impl Drop for ShareCache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
