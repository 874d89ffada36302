//! [`Succession`]: which ended agent process this one replaces.
//!
//! A server restarted on its data directory waits for the agents that were connected to come
//! back with the tasks they still run. An agent process that was killed never will, and a new
//! process has a new id, so the server cannot tell on its own that the old one is gone. The
//! kernel can: each agent holds, for as long as it runs, an exclusive `flock` on a file named
//! after it in the machine's runtime directory, with its id inside. A lock is released when
//! its process ends, however it ends; so an agent that takes the lock over knows the id in the
//! file is that of a process that has ended, and tells the server it replaces it. When two
//! agents of one name run at once, the second finds the lock held and replaces nobody.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;

use tracing::debug;

/// The lock this agent holds, and the agent it replaces.
#[derive(Debug)]
pub(crate) struct Succession {
    /// Held open (and locked) for the life of the process; `None` when the lock could not be
    /// taken.
    _lock: Option<File>,
    /// The id of the agent process of this name that held the lock before, which has ended; 0
    /// when none is known.
    pub(crate) replaces: u64,
}

impl Succession {
    /// Takes the lock of the agent `name` for the agent process `id`. Never fails: without the
    /// lock (a read-only directory, another live agent of this name), this agent replaces
    /// nobody.
    pub(crate) fn claim(name: &str, id: u64) -> Self {
        let path = lock_path(name);
        match take(&path, id) {
            Ok((file, replaces)) => {
                debug!(path = %path.display(), replaces, "agent lock taken");
                Self { _lock: Some(file), replaces }
            }
            Err(e) => {
                debug!(path = %path.display(), error = %e, "agent lock not taken; replacing nobody");
                Self { _lock: None, replaces: 0 }
            }
        }
    }
}

/// `$XDG_RUNTIME_DIR` (or the temporary directory)`/blitzen-agent-UID-NAME.lock`, the name kept
/// to letters, digits, `.`, `-` and `_`.
fn lock_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let name: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    let uid = rustix::process::getuid().as_raw();
    dir.join(format!("blitzen-agent-{uid}-{name}.lock"))
}

/// Locks `path` without waiting, reads the id of the process that held it before, and writes
/// `id` in its place.
fn take(path: &std::path::Path, id: u64) -> std::io::Result<(File, u64)> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
    let mut before = String::new();
    file.read_to_string(&mut before)?;
    let replaces = before.trim().parse::<u64>().unwrap_or(0);
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(format!("{id}\n").as_bytes())?;
    file.flush()?;
    Ok((file, replaces))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_taken_over_names_the_ended_holder_and_a_held_one_names_nobody() {
        let dir = std::env::temp_dir().join(format!(
            "blitzen-succession-{}-{}",
            std::process::id(),
            line!()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory");
        let path = dir.join("agent.lock");
        let (first, replaces) = take(&path, 11).expect("a free lock");
        assert_eq!(replaces, 0, "nobody held it before");
        // Held: a second agent of the name replaces nobody and leaves the file alone.
        assert!(take(&path, 22).is_err(), "the lock is held");
        drop(first);
        let (_second, replaces) = take(&path, 33).expect("the lock is free again");
        assert_eq!(replaces, 11, "the ended holder is named");
        let text = std::fs::read_to_string(&path).expect("the file");
        assert_eq!(text, "33\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
