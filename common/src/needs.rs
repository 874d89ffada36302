//! [`Needs`]: what a task asks of the machine that runs it, and its priority, as written in
//! Rust — in a task's attribute (`#[task(cpus = 2, memory = "4GiB", resources(gpu = 1),
//! priority = 5)]`, the task's defaults) or per call (`RunOptions::with_cpus`, `with_memory`,
//! `with_resource`, `with_priority`).
//!
//! Everything here is `const`, so the attribute's defaults are checked when the program
//! compiles, and `Copy`, so `RunOptions` stays a plain value. A call's needs become a protocol
//! [`Request`] only when they ask for more than a plain task's one CPU.

use blitzen_protocol::Request;

/// The most counted resources one task may name.
pub const MAX_RESOURCES: usize = 4;

/// What a task asks for; every field unset means a plain task (one CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// CPUs it holds while it runs; `None`: not said (one).
    pub cpus: Option<u32>,
    /// Memory it holds while it runs, in bytes, which is also its limit; `None`: not said (no
    /// limit).
    pub memory: Option<u64>,
    resources: [(&'static str, u64); MAX_RESOURCES],
    len: usize,
    /// Its priority (higher first; see `blitzen_protocol::priority`); `None`: not said (0).
    pub priority: Option<i32>,
}

impl Default for Needs {
    fn default() -> Self {
        Self::PLAIN
    }
}

impl Needs {
    /// Nothing said: a plain task.
    pub const PLAIN: Needs = Needs {
        cpus: None,
        memory: None,
        resources: [("", 0); MAX_RESOURCES],
        len: 0,
        priority: None,
    };

    /// The same, holding `cpus` CPUs.
    pub const fn with_cpus(mut self, cpus: u32) -> Self {
        self.cpus = Some(cpus);
        self
    }

    /// The same, holding (and limited to) `bytes` of memory.
    pub const fn with_memory(mut self, bytes: u64) -> Self {
        self.memory = Some(bytes);
        self
    }

    /// The same, with priority `priority` (higher first).
    pub const fn with_priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// The same, holding `count` of the counted resource `name` (replacing what it said of
    /// `name` before). Panics — at compile time in a `const` — past [`MAX_RESOURCES`] names.
    pub const fn with_resource(mut self, name: &'static str, count: u64) -> Self {
        let mut i = 0;
        while i < self.len {
            if str_eq(self.resources[i].0, name) {
                self.resources[i].1 = count;
                return self;
            }
            i += 1;
        }
        if self.len == MAX_RESOURCES {
            panic!("a task names at most 4 counted resources");
        }
        self.resources[self.len] = (name, count);
        self.len += 1;
        self
    }

    /// Whether it says nothing (a plain task): checked first, so that a plain call pays
    /// nothing.
    pub const fn is_plain(&self) -> bool {
        self.cpus.is_none() && self.memory.is_none() && self.len == 0 && self.priority.is_none()
    }

    /// The counted resources it names, in the order named.
    pub fn resources(&self) -> &[(&'static str, u64)] {
        &self.resources[..self.len]
    }

    /// `self`, with what `call` says overriding it, field by field and name by name.
    pub fn overridden_by(self, call: &Needs) -> Needs {
        let mut needs = self;
        if call.cpus.is_some() {
            needs.cpus = call.cpus;
        }
        if call.memory.is_some() {
            needs.memory = call.memory;
        }
        if call.priority.is_some() {
            needs.priority = call.priority;
        }
        for &(name, count) in call.resources() {
            needs = needs.with_resource(name, count);
        }
        needs
    }

    /// The protocol's request for these needs: `Ok(None)` for a plain task, an error for needs
    /// that make no sense (0 CPUs, 0 bytes, a count of 0, a name that is not one).
    pub fn request(&self) -> Result<Option<Request>, String> {
        let cpus = self.cpus.unwrap_or(1);
        if cpus == 1 && self.memory.is_none() && self.len == 0 {
            return Ok(None);
        }
        let mut request = Request {
            cpus,
            memory: self.memory,
            custom: self.resources().iter().map(|&(n, c)| (n.to_string(), c)).collect(),
        };
        request.normalize();
        request.validate()?;
        Ok(Some(request))
    }
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Needs = Needs::PLAIN.with_cpus(2).with_memory(1 << 30).with_resource("gpu", 1);

    #[test]
    fn a_call_overrides_the_task_defaults_field_by_field() {
        let call = Needs::PLAIN.with_resource("gpu", 2).with_resource("license", 1);
        let needs = DEFAULTS.overridden_by(&call);
        assert_eq!((needs.cpus, needs.memory), (Some(2), Some(1 << 30)));
        assert_eq!(needs.resources(), &[("gpu", 2), ("license", 1)]);
        let request = needs.request().expect("valid").expect("not plain");
        assert_eq!(request.to_string(), "2 CPUs, 1.0 GiB memory, gpu=2, license=1");
    }

    #[test]
    fn plain_needs_make_no_request_and_nonsense_is_refused() {
        assert_eq!(Needs::PLAIN.request(), Ok(None));
        assert_eq!(Needs::PLAIN.with_cpus(1).request(), Ok(None));
        assert!(Needs::PLAIN.with_cpus(0).request().is_err());
        assert!(Needs::PLAIN.with_memory(0).request().is_err());
        assert!(Needs::PLAIN.with_resource("gpu", 0).request().is_err());
        assert!(Needs::PLAIN.with_resource("no such", 1).request().is_err());
    }
}
