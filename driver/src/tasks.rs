//! [`Tasks`] and [`tasks!`](crate::tasks!): the crates of tasks an agent serves.
//!
//! A worker runs a task by name from the registry of its binary, which holds every
//! `#[blitzen::task]` of every crate linked in. A crate the binary never names is not linked
//! at all, and its tasks are silently missing: a client that only calls `spawn_client` would
//! serve the built-in tasks alone while drivers wait for the others. So `spawn_client` takes a
//! [`Tasks`], which only [`tasks!`](crate::tasks!) makes: naming the crates links them.

use std::fmt;

use blitzen_common::registry::{self, RegistryError};
use blitzen_common::task::TaskEntry;

/// The tasks an agent of this binary serves: every task of the crates named in
/// [`tasks!`](crate::tasks!), of this binary's own modules, and the built-in ones.
#[derive(Clone, Copy)]
pub struct Tasks {
    crates: &'static [&'static str],
}

/// Makes the [`Tasks`] an agent serves, naming each crate whose `#[blitzen::task]`s it must
/// run: `blitzen::tasks![my_tasks]`, `blitzen::tasks![physics, render]`. Naming a crate links
/// it into the binary (a crate that is only a dependency is left out by the compiler, tasks and
/// all). Tasks declared in this binary's own modules are always there: `blitzen::tasks![]`.
///
/// ```ignore
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     blitzen::worker_main();
///     let cluster = blitzen::distributed::DistributedDispatcher::new("192.168.1.2");
///     cluster.spawn_client(blitzen::tasks![my_tasks], 6)?;
///     Ok(())
/// }
/// ```
#[macro_export]
macro_rules! tasks {
    ($($krate:ident),* $(,)?) => {{
        $(
            #[allow(unused_imports)]
            use $krate as _;
        )*
        $crate::Tasks::__linked(&[$(::core::stringify!($krate)),*])
    }};
}

impl Tasks {
    /// What [`tasks!`](crate::tasks!) expands to; use the macro.
    #[doc(hidden)]
    pub const fn __linked(crates: &'static [&'static str]) -> Self {
        Self { crates }
    }

    /// The crates named in [`tasks!`](crate::tasks!).
    pub fn crates(&self) -> &'static [&'static str] {
        self.crates
    }

    /// The crates named that have no task in this binary's registry (each needs a
    /// `#[blitzen::task]`, or was named by mistake).
    pub fn crates_without_tasks(&self) -> Result<Vec<&'static str>, RegistryError> {
        let entries = registry::global()?.entries();
        Ok(self
            .crates
            .iter()
            .copied()
            .filter(|krate| !entries.iter().any(|e| crate_of(e) == *krate))
            .collect())
    }
}

/// The crate a task is declared in, as `tasks!` names it.
fn crate_of(entry: &TaskEntry) -> &'static str {
    entry.module.split("::").next().unwrap_or(entry.module)
}

impl fmt::Debug for Tasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tasks![{}]", self.crates.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crate_named_without_tasks_is_found() {
        // The built-in tasks are declared in blitzen_common.
        let tasks = Tasks::__linked(&["blitzen_common", "no_tasks_here"]);
        assert_eq!(tasks.crates_without_tasks().expect("registry"), ["no_tasks_here"]);
        assert_eq!(format!("{tasks:?}"), "tasks![blitzen_common, no_tasks_here]");
    }
}
