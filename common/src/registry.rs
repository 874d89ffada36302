//! The by-name registry of the tasks compiled into this binary.
//!
//! Built once, on first use, from every `#[task]` in the binary (collected with `inventory`) plus
//! the built-in tasks. Two tasks registered under one name make the registry unusable: the
//! error names both signatures, and every dispatcher and worker refuses to start with it.
//!
//! `inventory` only sees crates the linker kept: a crate of tasks that the binary never refers
//! to is dropped. Refer to it (call one of its functions, or name one of its tasks) from `main`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::builtin;
use crate::task::TaskEntry;

/// The tasks of this binary, by name.
#[derive(Debug)]
pub struct Registry {
    by_name: HashMap<&'static str, &'static TaskEntry>,
    /// The tasks whose calls are told apart for run-time estimates (see [`add`]).
    groups: HashMap<&'static str, Grouper>,
}

/// Tells apart, from its encoded arguments, calls of one task whose run times differ: the
/// pool estimates each group's run time on its own (0 is the group of every call by default).
pub type Grouper = fn(&[u8]) -> u64;

/// The registry could not be built.
#[derive(Clone, thiserror::Error)]
pub enum RegistryError {
    /// Two tasks share a name. Rename one with `#[task(name = "...")]`.
    #[error(
        "two tasks are registered under the name `{name}`: `{first}` and `{second}`; \
         rename one with #[task(name = \"...\")]"
    )]
    DuplicateName {
        /// The shared name.
        name: &'static str,
        /// One signature.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// [`add`] was called after the registry was first used.
    #[error("the task `{name}` was added to the registry after the registry was first used")]
    TooLate {
        /// The task's name.
        name: &'static str,
    },
}

/// The same text as `Display`: a `main` that returns this error prints a sentence.
impl std::fmt::Debug for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Registry {
    /// Builds a registry from entries, refusing duplicate names.
    pub fn from_entries(
        entries: impl IntoIterator<Item = &'static TaskEntry>,
    ) -> Result<Self, RegistryError> {
        let mut by_name = HashMap::new();
        for entry in entries {
            if let Some(first) = by_name.insert(entry.name, entry) {
                return Err(RegistryError::DuplicateName {
                    name: entry.name,
                    first: first.signature,
                    second: entry.signature,
                });
            }
        }
        Ok(Self { by_name, groups: HashMap::new() })
    }

    /// The group of a call of the task `name` with these arguments: what its [`Grouper`]
    /// says, or 0.
    pub fn group_of(&self, name: &str, args: &[u8]) -> u64 {
        if self.groups.is_empty() {
            return 0;
        }
        self.groups.get(name).map_or(0, |group| group(args))
    }

    /// The task registered under `name`.
    pub fn get(&self, name: &str) -> Option<&'static TaskEntry> {
        self.by_name.get(name).copied()
    }

    /// Every registered task, sorted by name.
    pub fn entries(&self) -> Vec<&'static TaskEntry> {
        let mut all: Vec<_> = self.by_name.values().copied().collect();
        all.sort_by_key(|e| e.name);
        all
    }
}

static GLOBAL: OnceLock<Result<Registry, RegistryError>> = OnceLock::new();

/// Entries made at run time, waiting for the registry to be built.
static ADDED: Mutex<Vec<(&'static TaskEntry, Option<Grouper>)>> = Mutex::new(Vec::new());

/// The registry of this binary: every `#[task]` it links, the built-in tasks, and the entries
/// [`add`]ed before its first use.
pub fn global() -> Result<&'static Registry, RegistryError> {
    GLOBAL
        .get_or_init(|| {
            let added = ADDED.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let mut registry = Registry::from_entries(
                (builtin::entries().into_iter().chain(inventory::iter::<TaskEntry>))
                    .chain(added.iter().map(|&(entry, _)| entry)),
            )?;
            registry.groups =
                (added.iter()).filter_map(|&(entry, group)| Some((entry.name, group?))).collect();
            Ok(registry)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Adds a task made at run time, for a language binding whose task's signature is only known
/// then (the Python package's names the interpreter and pickle versions), and whose calls
/// `group` tells apart (the Python package's one task runs every function). Must be called
/// before the registry is first used ([`global`]), in every process that serves or runs the
/// task.
pub fn add(entry: &'static TaskEntry, group: Option<Grouper>) -> Result<(), RegistryError> {
    let mut added = ADDED.lock().unwrap_or_else(PoisonError::into_inner);
    if GLOBAL.get().is_some() {
        return Err(RegistryError::TooLate { name: entry.name });
    }
    added.push((entry, group));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitzen_protocol::Outcome;

    fn nothing(_: &[u8]) -> Outcome {
        Outcome::UnknownTask
    }

    static A: TaskEntry = TaskEntry {
        name: "a",
        module: "m",
        signature: "fn a() -> ()",
        fingerprint: 1,
        invoke: nothing,
    };
    static A2: TaskEntry = TaskEntry {
        name: "a",
        module: "m",
        signature: "fn a(u8) -> ()",
        fingerprint: 2,
        invoke: nothing,
    };
    static B: TaskEntry = TaskEntry {
        name: "b",
        module: "m",
        signature: "fn b() -> ()",
        fingerprint: 3,
        invoke: nothing,
    };

    #[test]
    fn duplicate_names_are_refused_with_both_signatures() {
        let err = Registry::from_entries([&A, &B, &A2]).expect_err("duplicate");
        let text = err.to_string();
        assert!(text.contains("fn a() -> ()") && text.contains("fn a(u8) -> ()"), "{text}");
    }

    #[test]
    fn global_registry_holds_the_builtins() {
        let reg = global().expect("no duplicates");
        for name in ["sleep", "echo", "command"] {
            assert!(reg.get(name).is_some(), "built-in `{name}` missing");
        }
        let reg = Registry::from_entries([&A, &B]).expect("distinct");
        assert_eq!(reg.entries().iter().map(|e| e.name).collect::<Vec<_>>(), ["a", "b"]);
        assert!(reg.get("c").is_none());
    }

    #[test]
    fn an_entry_added_after_first_use_is_refused_by_name() {
        global().expect("no duplicates");
        let err = add(&B, None).expect_err("too late");
        assert!(matches!(err, RegistryError::TooLate { name: "b" }), "{err}");
        assert!(global().expect("built").get("b").is_none());
        assert_eq!(global().expect("built").group_of("sleep", b"12345678"), 0);
    }
}
