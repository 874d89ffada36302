//! Arguments made in the worker from their parts, when some are files of shared values
//! ([`InputPart::File`]): each file is mapped read-only, not read through the pipe, and a task
//! of one argument decodes from the mapping itself.

use std::fs::File;
use std::io;

use blitzen_protocol::inputs::{InputPart, Inputs, splice};
use bytes::Bytes;

/// The arguments `inputs` make.
pub(super) fn assemble(inputs: &Inputs) -> io::Result<Bytes> {
    let values = (inputs.parts.iter())
        .map(|part| match part {
            InputPart::Value(bytes) => Ok(bytes.clone()),
            InputPart::File(path) => map(path),
            other => {
                Err(io::Error::other(format!("an input not resolved for the worker: {other:?}")))
            }
        })
        .collect::<io::Result<Vec<Bytes>>>()?;
    Ok(splice(&inputs.framing, &values))
}

thread_local! {
    /// The last file mapped, kept for the next task that takes it (a sweep over one shared
    /// value maps it once per worker): at most one, so a value the agent forgot holds memory
    /// only until this worker maps another.
    static LAST: std::cell::RefCell<Option<(String, Bytes)>> = const { std::cell::RefCell::new(None) };
}

/// The file at `path`, mapped: its bytes without a copy. A cache's files are written once and
/// never changed (a value is removed, never rewritten), so a mapping of the same path serves
/// again.
fn map(path: &str) -> io::Result<Bytes> {
    if let Some(bytes) =
        LAST.with(|last| last.borrow().as_ref().filter(|(p, _)| p == path).map(|(_, b)| b.clone()))
    {
        return Ok(bytes);
    }
    let bytes = map_anew(path)?;
    LAST.with(|last| *last.borrow_mut() = Some((path.to_string(), bytes.clone())));
    Ok(bytes)
}

fn map_anew(path: &str) -> io::Result<Bytes> {
    let file = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
    if len == 0 {
        return Ok(Bytes::new());
    }
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a new read-only, private mapping of the whole open file at an address the kernel
    // picks, so it overlaps nothing of ours; it is unmapped exactly once, by `Mapping::drop`.
    // The cache's files are written once and never changed afterwards (a value is removed,
    // never rewritten, and a mapping keeps a removed file's pages).
    #[allow(unsafe_code)]
    let ptr = unsafe {
        rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ, MapFlags::PRIVATE, &file, 0)?
    };
    Ok(Bytes::from_owner(Mapping { ptr: ptr.cast(), len }))
}

/// A read-only mapping, unmapped when dropped.
struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone.
#[allow(unsafe_code)]
unsafe impl Send for Mapping {}
// SAFETY: as above; reads from several threads are fine.
#[allow(unsafe_code)]
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.ptr, self.len)
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what `mmap` returned and nothing else unmaps them.
        #[allow(unsafe_code)]
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.cast_mut().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitzen_protocol::inputs::Framing;

    #[test]
    fn a_file_part_is_mapped_and_one_argument_is_the_mapping_itself() {
        let path = std::env::temp_dir().join(format!("blitzen-mapped-{}", std::process::id()));
        std::fs::write(&path, b"shared bytes").expect("writes");
        let file = path.display().to_string();
        let single = Inputs {
            framing: Framing::Single,
            parts: vec![InputPart::File(file.clone())],
            after: vec![],
        };
        assert_eq!(&assemble(&single).expect("maps")[..], b"shared bytes");
        let two = Inputs {
            framing: Framing::Prefixed(Bytes::from_static(b">")),
            parts: vec![InputPart::Value(Bytes::from_static(b"v")), InputPart::File(file)],
            after: vec![],
        };
        assert_eq!(
            &assemble(&two).expect("maps")[..],
            b">\x01\x00\x00\x00v\x0c\x00\x00\x00shared bytes"
        );
        // Mapped once: the same path serves again, even once the file is gone.
        std::fs::remove_file(&path).expect("removes");
        assert_eq!(&assemble(&single).expect("kept")[..], b"shared bytes");
        let never = format!("{}-never", path.display());
        let gone =
            Inputs { framing: Framing::Single, parts: vec![InputPart::File(never)], after: vec![] };
        assert!(assemble(&gone).is_err(), "a missing file is an error, not a crash");
    }
}
