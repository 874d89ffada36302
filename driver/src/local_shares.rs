//! [`LocalShares`]: the values a multicore dispatcher shares among its tasks, one file each on a
//! memory file system, which its workers map instead of receiving the bytes through their pipes
//! (as an agent's workers map its cache's files on a cluster).
//!
//! A file goes once its value is no longer shared (its last handle dropped) and no task that
//! takes it is unfinished.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use blitzen_protocol::ids::JobId;
use blitzen_protocol::inputs::{InputPart, Inputs};
use bytes::Bytes;
use tracing::warn;

use crate::call::Stored;

/// The shared values' files, by number.
#[derive(Debug, Default)]
pub(crate) struct LocalShares {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The directory, once a value was shared.
    dir: Option<PathBuf>,
    /// The next number.
    next: u64,
    values: HashMap<u64, Value>,
    /// The values each unfinished task takes.
    by_job: HashMap<JobId, Vec<u64>>,
}

#[derive(Debug)]
struct Value {
    path: PathBuf,
    /// Whether a handle still shares it.
    shared: bool,
    /// Unfinished tasks that take it.
    uses: u32,
}

impl LocalShares {
    /// Writes `bytes` to a file of its own; `None` (each task then gets the bytes) when it
    /// cannot be written.
    pub(crate) fn share(self: &Arc<Self>, bytes: &Bytes) -> Option<Stored> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.dir.is_none() {
            st.dir = Some(create_dir()?);
        }
        st.next += 1;
        let id = st.next;
        let path = st.dir.as_ref()?.join(id.to_string());
        if let Err(e) = std::fs::write(&path, bytes) {
            warn!(path = %path.display(), error = %e, "cannot write a shared value; each task gets its bytes");
            return None;
        }
        st.values.insert(id, Value { path, shared: true, uses: 0 });
        let shares = Arc::downgrade(self);
        let unshare = Box::new(move |id| {
            if let Some(shares) = shares.upgrade() {
                shares.unshare(id);
            }
        });
        Some(Stored { id, unshare })
    }

    /// No handle shares value `id` any more.
    fn unshare(&self, id: u64) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = st.values.get_mut(&id) {
            v.shared = false;
            if v.uses == 0 {
                remove(&mut st, id);
            }
        }
    }

    /// Task `job` takes the shared values among `inputs`: they become the files its worker
    /// maps, kept until it finishes.
    pub(crate) fn take(&self, job: JobId, inputs: &mut Inputs) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut taken = Vec::new();
        for part in &mut inputs.parts {
            if let InputPart::Shared(id) = *part
                && let Some(v) = st.values.get_mut(&id)
            {
                v.uses += 1;
                *part = InputPart::File(v.path.display().to_string());
                taken.push(id);
            }
        }
        if !taken.is_empty() {
            st.by_job.insert(job, taken);
        }
    }

    /// Tasks finished: the values no handle shares and no task takes go.
    pub(crate) fn finished(&self, jobs: impl Iterator<Item = JobId>) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.by_job.is_empty() {
            return;
        }
        for job in jobs {
            for id in st.by_job.remove(&job).unwrap_or_default() {
                let Some(v) = st.values.get_mut(&id) else { continue };
                v.uses = v.uses.saturating_sub(1);
                if v.uses == 0 && !v.shared {
                    remove(&mut st, id);
                }
            }
        }
    }
}

impl Drop for LocalShares {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(dir) = &st.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn remove(st: &mut State, id: u64) {
    if let Some(v) = st.values.remove(&id) {
        let _ = std::fs::remove_file(&v.path);
    }
}

/// A directory of this dispatcher's own, on `/dev/shm` where there is one.
fn create_dir() -> Option<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() { shm } else { std::env::temp_dir() };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("blitzen-shares-{}-{n}", std::process::id()));
    match std::fs::create_dir_all(&dir) {
        Ok(()) => Some(dir),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot make a directory for shared values; each task gets their bytes");
            None
        }
    }
}
