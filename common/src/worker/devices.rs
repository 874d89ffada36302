//! The devices of counted resources a task holds, named in its environment while it runs:
//! `BLITZEN_RESOURCE_<NAME>=1,3` for every resource, and `CUDA_VISIBLE_DEVICES` for `gpu`. What
//! was there before comes back after the task. Programs the task starts inherit them; the Python
//! package also puts them in `os.environ` ([`current`]).

use std::cell::RefCell;
use std::ffi::OsString;

use blitzen_protocol::devices::device_variable;

/// The variables naming `devices`, in order.
pub fn variables(devices: &[(String, Vec<u32>)]) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for (name, indices) in devices {
        let list = indices.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        if name == "gpu" {
            vars.push(("CUDA_VISIBLE_DEVICES".to_string(), list.clone()));
        }
        vars.push((device_variable(name), list));
    }
    vars
}

thread_local! {
    /// The variables of the task running on this thread.
    static CURRENT: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
}

/// The variables of the task running now, on this thread (empty when it holds no devices).
pub fn current() -> Vec<(String, String)> {
    CURRENT.with(|c| c.borrow().clone())
}

/// While it lives, the process environment names a task's devices.
pub(super) struct Named {
    before: Vec<(String, Option<OsString>)>,
}

impl Named {
    pub(super) fn set(devices: &[(String, Vec<u32>)]) -> Self {
        let vars = variables(devices);
        let mut before = Vec::with_capacity(vars.len());
        for (key, value) in &vars {
            before.push((key.clone(), std::env::var_os(key)));
            // SAFETY: the worker's own threads (the watchdog polls a socket, the flusher writes
            // to it, the streamer reads pipes) never read the environment; a task that left
            // threads of its own running and reads the environment from them is warned against
            // in the documentation of devices.
            #[allow(unsafe_code)]
            unsafe {
                std::env::set_var(key, value);
            }
        }
        CURRENT.with(|c| *c.borrow_mut() = vars);
        Self { before }
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().clear());
        for (key, value) in self.before.drain(..) {
            // SAFETY: as in `set`.
            #[allow(unsafe_code)]
            unsafe {
                match value {
                    Some(value) => std::env::set_var(&key, value),
                    None => std::env::remove_var(&key),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_is_also_cuda_visible() {
        let devices = vec![("fpga".to_string(), vec![4]), ("gpu".to_string(), vec![1, 3])];
        assert_eq!(
            variables(&devices),
            [
                ("BLITZEN_RESOURCE_FPGA".to_string(), "4".to_string()),
                ("CUDA_VISIBLE_DEVICES".to_string(), "1,3".to_string()),
                ("BLITZEN_RESOURCE_GPU".to_string(), "1,3".to_string()),
            ]
        );
        assert!(variables(&[]).is_empty());
    }
}
