//! A task's memory limit, enforced by its worker.
//!
//! Before a task with a limit runs, the worker sets its own address-space limit (`RLIMIT_AS`) to
//! what it maps already plus the task's limit, and sets it back when the task ends. An
//! allocation that would go past it fails: the Rust runtime then aborts the worker after
//! writing "memory allocation of N bytes failed", which the pool recognises; Python raises
//! `MemoryError`, which the package reports through [`note_out_of_memory`]. Either way the task
//! ends `MemoryExceeded` and its worker is replaced.
//!
//! The address space is not the resident memory: a task that starts threads or maps files
//! reserves more than it touches, and meets its limit sooner than its RSS would say. A kernel
//! control group (`memory.max`) would count resident memory instead; it is not used.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The line the Rust runtime writes to stderr, before it aborts, when an allocation fails.
pub const OUT_OF_MEMORY_MESSAGE: &str = "memory allocation of ";

/// Set by [`note_out_of_memory`] while a task runs.
static OUT_OF_MEMORY: AtomicBool = AtomicBool::new(false);

/// Says that the running task failed for lack of memory (its language's own out-of-memory
/// error, such as Python's `MemoryError`): under a memory limit it then ends `MemoryExceeded`.
#[doc(hidden)]
pub fn note_out_of_memory() {
    OUT_OF_MEMORY.store(true, Ordering::Relaxed);
}

/// The limit in force for one task; [`Limit::lift`] ends it.
#[derive(Debug)]
pub(super) struct Limit {
    previous: Rlimit,
}

impl Limit {
    /// Limits this process to `bytes` more address space than it has now.
    pub(super) fn set(bytes: u64) -> io::Result<Self> {
        OUT_OF_MEMORY.store(false, Ordering::Relaxed);
        // Resets the peak RSS, so that the one reported is this task's. Kernels without it
        // report the worker's peak instead.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let used = address_space()?;
        let previous = getrlimit(Resource::As);
        let mut soft = used.saturating_add(bytes);
        if let Some(hard) = previous.maximum {
            soft = soft.min(hard);
        }
        setrlimit(Resource::As, Rlimit { current: Some(soft), maximum: previous.maximum })?;
        Ok(Self { previous })
    }

    /// Puts the previous limit back; returns whether the task said it ran out of memory, and
    /// the peak RSS while it ran, in bytes.
    pub(super) fn lift(self) -> (bool, Option<u64>) {
        let _ = setrlimit(Resource::As, self.previous);
        (OUT_OF_MEMORY.swap(false, Ordering::Relaxed), peak_rss())
    }
}

/// The process's address space now, in bytes (the first field of `/proc/self/statm`, in pages).
fn address_space() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = (statm.split_whitespace().next())
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::other(format!("cannot read /proc/self/statm: {statm:?}")))?;
    Ok(pages * rustix::param::page_size() as u64)
}

/// The process's peak RSS, in bytes (`VmHWM` of `/proc/self/status`).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_an_address_space_and_a_peak() {
        let space = address_space().expect("statm");
        let peak = peak_rss().expect("status");
        assert!(space > peak && peak > 0, "address space {space}, peak RSS {peak}");
    }
}
