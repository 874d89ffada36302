//! What a task asks for ([`Request`]) and what a machine has ([`Capacity`]): CPUs, memory, and
//! counted resources by name (`gpu=2`, `license=1`).
//!
//! A task holds its request while it runs, on the one agent (or pool) that runs it. A task
//! without a request is *plain*: it holds one CPU and nothing else, and pays nothing for this
//! (none of it travels with it). A request names each counted resource once, sorted by name.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::size::SizeText;

/// What a task needs while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Request {
    /// CPUs (worker slots) it holds, at least 1.
    pub cpus: u32,
    /// Memory it holds, in bytes — also its limit: going past it ends the task
    /// `MemoryExceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Counted resources it holds, by name, sorted, each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom: Vec<(String, u64)>,
}

impl Default for Request {
    fn default() -> Self {
        Self::PLAIN
    }
}

impl Request {
    /// What a task without a request holds: one CPU.
    pub const PLAIN: Request = Request { cpus: 1, memory: None, custom: Vec::new() };

    /// Whether it asks for nothing beyond one CPU.
    pub fn is_plain(&self) -> bool {
        self.cpus <= 1 && self.memory.is_none() && self.custom.is_empty()
    }

    /// Checks that it makes sense: at least one CPU, no zero amounts, each name once and sorted
    /// (as [`Request::normalize`] leaves it), names that are words.
    pub fn validate(&self) -> Result<(), String> {
        if self.cpus == 0 {
            return Err("a task needs at least 1 CPU".into());
        }
        if self.memory == Some(0) {
            return Err("a memory request of 0 bytes".into());
        }
        check_counts(&self.custom, |name| format!("a request of 0 `{name}`"))
    }

    /// Sorts the counted resources by name and adds up those named twice.
    pub fn normalize(&mut self) {
        self.custom.sort_by(|a, b| a.0.cmp(&b.0));
        self.custom.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = kept.1.saturating_add(later.1);
            }
            same
        });
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} CPU{}", self.cpus, if self.cpus == 1 { "" } else { "s" })?;
        if let Some(memory) = self.memory {
            write!(f, ", {} memory", SizeText(memory))?;
        }
        for (name, count) in &self.custom {
            write!(f, ", {name}={count}")?;
        }
        Ok(())
    }
}

/// Whether `name` can name a counted resource: letters, digits, `_`, `-`, `.`, starting with a
/// letter, at most 64 bytes (it is written in `--resources gpu=2` and in metrics labels).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a resource name (a letter, then letters, digits, `_`, `-` or `.`; \
             at most 64)"
        ))
    }
}

/// Checks counted resources: proper names, sorted, each once, none counted 0 (`zero` says
/// that).
fn check_counts(counts: &[(String, u64)], zero: impl Fn(&str) -> String) -> Result<(), String> {
    for (i, (name, count)) in counts.iter().enumerate() {
        check_name(name)?;
        if *count == 0 {
            return Err(zero(name));
        }
        if i > 0 && counts[i - 1].0 >= *name {
            return Err(format!("resource `{name}` named twice or out of order"));
        }
    }
    Ok(())
}

/// What a machine offers its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// CPUs (worker slots) its tasks may hold at once.
    pub cpus: u32,
    /// Memory its tasks may hold at once, in bytes.
    pub memory: u64,
    /// Counted resources, by name, sorted, each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom: Vec<(String, u64)>,
}

impl Capacity {
    /// `cpus` CPUs, `memory` bytes, nothing else.
    pub fn new(cpus: u32, memory: u64) -> Self {
        Self { cpus, memory, custom: Vec::new() }
    }

    /// `cpus` CPUs and this machine's memory ([`machine_memory`]): what an agent offers unless
    /// told otherwise (with one CPU per worker).
    pub fn of_machine(cpus: u32) -> Self {
        Self::new(cpus, machine_memory())
    }

    /// What a pool of `workers` offers when told `cpus`, `memory` and counted `resources`: the
    /// machine's ([`Capacity::of_machine`]) with those in place of its own; `None` when told
    /// nothing, which stands for the same default. The one rule of every front end (the
    /// multicore builder, `blitzen-client`, the Python package).
    pub fn offered(
        workers: usize,
        cpus: Option<u32>,
        memory: Option<u64>,
        resources: Vec<(String, u64)>,
    ) -> Option<Self> {
        if cpus.is_none() && memory.is_none() && resources.is_empty() {
            return None;
        }
        let mut capacity = Self::of_machine(u32::try_from(workers).unwrap_or(u32::MAX));
        capacity.cpus = cpus.unwrap_or(capacity.cpus);
        capacity.memory = memory.unwrap_or(capacity.memory);
        for (name, count) in resources {
            capacity = capacity.with_resource(name, count);
        }
        Some(capacity)
    }

    /// The same, with `count` of the counted resource `name` (replacing what it had of it).
    pub fn with_resource(mut self, name: impl Into<String>, count: u64) -> Self {
        let name = name.into();
        self.custom.retain(|(n, _)| *n != name);
        self.custom.push((name, count));
        self.custom.sort();
        self
    }

    /// Checks that it can run something: at least one CPU, some memory, counted resources with
    /// proper names, each at least 1, named once, sorted.
    pub fn validate(&self) -> Result<(), String> {
        if self.cpus == 0 {
            return Err("0 CPUs: nothing could run".into());
        }
        if self.memory == 0 {
            return Err("0 bytes of memory".into());
        }
        check_counts(&self.custom, |name| format!("0 `{name}`: leave it out instead"))
    }

    /// How much of counted resource `name` it has (0 if none).
    pub fn custom(&self, name: &str) -> u64 {
        self.custom.iter().find(|(n, _)| n == name).map_or(0, |(_, count)| *count)
    }

    /// Why `request` can never fit here, even with nothing else running; `None` if it can.
    pub fn shortfall(&self, request: &Request) -> Option<String> {
        let mut missing = Vec::new();
        if request.cpus > self.cpus {
            missing.push(format!("{} CPUs of {}", request.cpus, self.cpus));
        }
        if let Some(memory) = request.memory
            && memory > self.memory
        {
            missing.push(format!("{} memory of {}", SizeText(memory), SizeText(self.memory)));
        }
        for (name, count) in &request.custom {
            let have = self.custom(name);
            if *count > have {
                missing.push(format!("{name}={count} of {have}"));
            }
        }
        (!missing.is_empty()).then(|| format!("it asks for {}", missing.join(", ")))
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} CPU{}, {} memory",
            self.cpus,
            if self.cpus == 1 { "" } else { "s" },
            SizeText(self.memory)
        )?;
        for (name, count) in &self.custom {
            write!(f, ", {name}={count}")?;
        }
        Ok(())
    }
}

/// This machine's memory in bytes (`MemTotal` of `/proc/meminfo`); `u64::MAX` if unreadable.
pub fn machine_memory() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    (meminfo.lines().find_map(|line| line.strip_prefix("MemTotal:")))
        .and_then(|kib| kib.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map_or(u64::MAX, |kib| kib * 1024)
}

/// What the running tasks of one machine hold, against its [`Capacity`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPUs held.
    pub cpus: u32,
    /// Memory held, in bytes.
    pub memory: u64,
    /// Counted resources held, in the order of the capacity's.
    pub custom: Vec<u64>,
}

impl Usage {
    /// Nothing held, for `capacity`.
    pub fn new(capacity: &Capacity) -> Self {
        Self { cpus: 0, memory: 0, custom: vec![0; capacity.custom.len()] }
    }

    /// Whether `request` fits in what `capacity` has left.
    pub fn fits(&self, capacity: &Capacity, request: &Request) -> bool {
        if self.cpus + request.cpus > capacity.cpus {
            return false;
        }
        if request.memory.is_some_and(|m| self.memory.saturating_add(m) > capacity.memory) {
            return false;
        }
        request.custom.iter().all(|(name, count)| {
            match capacity.custom.iter().position(|(n, _)| n == name) {
                Some(i) => self.custom[i].saturating_add(*count) <= capacity.custom[i].1,
                None => false,
            }
        })
    }

    /// Holds `request` (which must fit, see [`Usage::fits`]).
    pub fn hold(&mut self, capacity: &Capacity, request: &Request) {
        self.cpus += request.cpus;
        self.memory = self.memory.saturating_add(request.memory.unwrap_or(0));
        for (name, count) in &request.custom {
            if let Some(i) = capacity.custom.iter().position(|(n, _)| n == name) {
                self.custom[i] = self.custom[i].saturating_add(*count);
            }
        }
    }

    /// Gives back what [`Usage::hold`] took for `request`.
    pub fn release(&mut self, capacity: &Capacity, request: &Request) {
        self.cpus = self.cpus.saturating_sub(request.cpus);
        self.memory = self.memory.saturating_sub(request.memory.unwrap_or(0));
        for (name, count) in &request.custom {
            if let Some(i) = capacity.custom.iter().position(|(n, _)| n == name) {
                self.custom[i] = self.custom[i].saturating_sub(*count);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cpus: u32, memory: Option<u64>, custom: &[(&str, u64)]) -> Request {
        Request { cpus, memory, custom: custom.iter().map(|(n, c)| (n.to_string(), *c)).collect() }
    }

    #[test]
    fn requests_fit_what_is_left_and_are_given_back() {
        let capacity = Capacity {
            cpus: 4,
            memory: 8 << 30,
            custom: vec![("gpu".into(), 2), ("license".into(), 1)],
        };
        let mut usage = Usage::new(&capacity);
        let big = request(2, Some(6 << 30), &[("gpu", 2)]);
        assert!(usage.fits(&capacity, &big));
        usage.hold(&capacity, &big);
        assert!(!usage.fits(&capacity, &request(1, None, &[("gpu", 1)])), "the GPUs are held");
        assert!(!usage.fits(&capacity, &request(1, Some(3 << 30), &[])), "the memory is held");
        assert!(usage.fits(&capacity, &request(2, None, &[("license", 1)])));
        assert!(!usage.fits(&capacity, &request(3, None, &[])), "two CPUs are left");
        assert!(!usage.fits(&capacity, &request(1, None, &[("tpu", 1)])), "none here");
        usage.release(&capacity, &big);
        assert_eq!(usage, Usage::new(&capacity));
    }

    #[test]
    fn a_shortfall_says_what_is_missing() {
        let capacity = Capacity { cpus: 4, memory: 1 << 30, custom: vec![("gpu".into(), 1)] };
        assert_eq!(capacity.shortfall(&request(4, Some(1 << 30), &[("gpu", 1)])), None);
        let why = capacity.shortfall(&request(8, Some(2 << 30), &[("gpu", 2), ("tpu", 1)]));
        assert_eq!(
            why.as_deref(),
            Some("it asks for 8 CPUs of 4, 2.0 GiB memory of 1.0 GiB, gpu=2 of 1, tpu=1 of 0")
        );
    }

    #[test]
    fn bad_requests_and_counts_are_refused() {
        assert!(request(0, None, &[]).validate().is_err());
        assert!(request(1, Some(0), &[]).validate().is_err());
        assert!(request(1, None, &[("gpu", 0)]).validate().is_err());
        assert!(request(1, None, &[("b", 1), ("a", 1)]).validate().is_err());
        assert!(request(1, None, &[("9lives", 1)]).validate().is_err());
        assert!(request(2, Some(1), &[("a", 1), ("b", 2)]).validate().is_ok());
        let mut twice = request(1, None, &[("gpu", 1), ("cpu_x", 1), ("gpu", 2)]);
        twice.normalize();
        assert_eq!(twice.custom, vec![("cpu_x".to_string(), 1), ("gpu".to_string(), 3)]);
    }

    #[test]
    fn plain_is_one_cpu() {
        assert!(Request::default().is_plain());
        assert!(!request(2, None, &[]).is_plain());
        assert_eq!(
            request(2, Some(1 << 30), &[("gpu", 1)]).to_string(),
            "2 CPUs, 1.0 GiB memory, gpu=1"
        );
    }
}
