//! What this machine keeps of a session, so that another shell can follow it: its record
//! (`session.json`: where its server is, its items and their task ids) and the results
//! collected so far (`results.jsonl`, one line per finished item), in
//! `$BLITZEN_STATE_DIR/sessions/NAME/` (default: `$XDG_STATE_HOME/blitzen`, else
//! `~/.local/state/blitzen`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use blitzen::TaskId;
use serde::{Deserialize, Serialize};

/// A session's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub session: String,
    /// Its server, `host:port`; for a cluster started for the run, the address it had.
    pub server: String,
    /// Whether the cluster was started for the run (and is gone with it).
    pub local: bool,
    /// The program, as given.
    pub program: Vec<String>,
    /// Each item's number, value and task.
    pub numbers: Vec<u64>,
    pub values: Vec<String>,
    pub ids: Vec<TaskId<i32>>,
}

/// How one item ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ended {
    pub item: u64,
    /// `None`: its program exited 0; else why not.
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub host: Option<String>,
    pub seconds: f64,
}

fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BLITZEN_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("blitzen");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".local/state/blitzen")
}

fn dir_of(session: &str) -> Result<PathBuf, String> {
    if session.is_empty() || session.contains(['/', '\0']) || session.starts_with('.') {
        return Err(format!("`{session}` is not a session name"));
    }
    Ok(state_dir().join("sessions").join(session))
}

impl Record {
    pub fn save(&self) -> Result<(), String> {
        let dir = dir_of(&self.session)?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let text = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        let path = dir.join("session.json");
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        // A session submitted again under the same name starts with no results.
        let _ = std::fs::remove_file(dir.join("results.jsonl"));
        Ok(())
    }

    pub fn load(session: &str) -> Result<Self, String> {
        let path = dir_of(session)?.join("session.json");
        let text = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!(
                    "no session `{session}` was submitted from this machine ({} is missing)",
                    path.display()
                )
            }
            _ => format!("{}: {e}", path.display()),
        })?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The place of item `item` among the items.
    pub fn place(&self, item: u64) -> Option<usize> {
        self.numbers.iter().position(|&n| n == item)
    }

    /// The results collected so far, by item.
    pub fn ended(&self) -> Result<BTreeMap<u64, Ended>, String> {
        let path = dir_of(&self.session)?.join("results.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut ended = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let one: Ended =
                serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display()))?;
            ended.insert(one.item, one);
        }
        Ok(ended)
    }

    /// Appends finished items to the results.
    pub fn add(&self, ended: &[Ended]) -> Result<(), String> {
        let path = dir_of(&self.session)?.join("results.jsonl");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut text = Vec::new();
        for one in ended {
            serde_json::to_writer(&mut text, one).map_err(|e| e.to_string())?;
            text.push(b'\n');
        }
        file.write_all(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}
