//! CPU time and memory of processes, and their children, read from `/proc`.

use crate::Result;

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// The most resident memory a process has had so far, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmHWM")
}

/// Starts a process's peak resident memory again from its present one (Linux's
/// `clear_refs`), so that [`peak_rss_bytes`] tells the peak of what follows.
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| format!("/proc/{pid}/clear_refs: {e}"))
}

/// A field of `/proc/PID/status` given in kB, in bytes.
fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

/// CPU time a process's live threads have used, in nanoseconds (`schedstat`: exact, unlike the
/// 10 ms ticks of `stat`).
pub fn cpu_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let Ok(entry) = entry else { continue };
        let path = entry.path().join("schedstat");
        // A thread may end between listing and reading.
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let ns = text.split_whitespace().next().and_then(|n| n.parse::<u64>().ok());
        total += ns.ok_or_else(|| format!("{}: unexpected contents", path.display()))?;
    }
    Ok(total)
}

/// Processes whose parent is `pid`.
pub fn children(pid: u32) -> Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))? {
        let Ok(entry) = entry else { continue };
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    Ok(found)
}
