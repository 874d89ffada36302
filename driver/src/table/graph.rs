//! [`Graph`]: tasks that wait for others before they are sent — for their results, which stand
//! among their arguments, or only for their end ([`RunOptions::after`](crate::RunOptions::after)).
//!
//! A waiting task is parked here with the arguments known so far. The result table tells the
//! graph of every task that ends ([`Graph::settled`]): a result fills the arguments that wait for
//! it, and a task whose last input came in is released, its arguments spliced
//! ([`Parts::splice`]); a failure fails every task that waits on it with
//! [`Outcome::DependencyFailed`], and the table settles those in turn, so a failure reaches
//! every descendant at once. A task can only wait on tasks issued before it, so there are no
//! cycles.

use blitzen_common::inputs::{Framing, Parts};
use blitzen_protocol::Outcome;
use blitzen_protocol::ids::DriverTaskId;
use bytes::Bytes;

use super::ByTask;
use crate::call::Call;

/// What a parked task waits for from one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Its result, for the argument at this index.
    Input(usize),
    /// Its success (`RunOptions::after`).
    After,
    /// Its end, whatever the outcome (`RunOptions::after_any`).
    AfterAny,
}

/// What an ended task did to the tasks waiting on it.
#[derive(Debug)]
pub(crate) enum Consequence {
    /// Every input is in: send it.
    Released(Call),
    /// It will not run: settle it so.
    Failed(DriverTaskId, Outcome),
}

#[derive(Debug, Default)]
pub(crate) struct Graph {
    parked: ByTask<Parked>,
    /// For each task not ended yet, the parked tasks that wait on it.
    waiters: ByTask<Vec<(DriverTaskId, Wait)>>,
}

#[derive(Debug)]
struct Parked {
    /// Its arguments are empty until it is released.
    call: Call,
    /// How `values` make its arguments.
    framing: Framing,
    /// Its arguments, `None` while waited for.
    values: Vec<Option<Bytes>>,
    /// Inputs and predecessors not in yet.
    missing: usize,
}

impl Graph {
    /// Whether no task waits (the table skips the graph then).
    pub(crate) fn is_empty(&self) -> bool {
        self.parked.is_empty() && self.waiters.is_empty()
    }

    /// Parks `call` until each of `waits` (on tasks not ended yet) is met; `values` has its
    /// arguments, those waited for `None`.
    pub(crate) fn park(
        &mut self,
        call: Call,
        framing: Framing,
        values: Vec<Option<Bytes>>,
        waits: Vec<(DriverTaskId, Wait)>,
    ) {
        let id = call.id;
        for &(on, wait) in &waits {
            self.waiters.entry(on).or_default().push((id, wait));
        }
        self.parked.insert(id, Parked { call, framing, values, missing: waits.len() });
    }

    /// Tasks parked.
    pub(crate) fn waiting(&self) -> usize {
        self.parked.len()
    }

    /// Whether task `id` is parked.
    pub(crate) fn is_parked(&self, id: DriverTaskId) -> bool {
        self.parked.contains_key(&id)
    }

    /// Task `id` (named `name`) ended with `outcome`: what that does to the tasks waiting on it.
    pub(crate) fn settled(
        &mut self,
        id: DriverTaskId,
        name: &str,
        outcome: &Outcome,
        out: &mut Vec<Consequence>,
    ) {
        // Settled while parked (cancelled, shut down, or failed by an input): never sent.
        self.parked.remove(&id);
        let Some(waiters) = self.waiters.remove(&id) else { return };
        for (task, wait) in waiters {
            let Some(parked) = self.parked.get_mut(&task) else { continue };
            match (wait, outcome) {
                (Wait::Input(i), Outcome::Value(bytes)) => {
                    if let Some(slot) = parked.values.get_mut(i) {
                        *slot = Some(bytes.clone());
                    }
                }
                (Wait::After, Outcome::Value(_)) | (Wait::AfterAny, _) => {}
                (_, failed) => {
                    self.parked.remove(&task);
                    out.push(Consequence::Failed(task, dependency_failed(id, name, failed)));
                    continue;
                }
            }
            parked.missing -= 1;
            if parked.missing == 0
                && let Some(parked) = self.parked.remove(&task)
            {
                out.push(Consequence::Released(parked.release()));
            }
        }
    }
}

impl Parked {
    /// Its call, with its arguments spliced.
    fn release(mut self) -> Call {
        let values: Vec<Bytes> = self.values.into_iter().map(Option::unwrap_or_default).collect();
        self.call.args = Parts::splice(&self.framing, &values);
        self.call
    }
}

/// The outcome of a task that did not run because task `id` (named `name`) failed with
/// `failed`: the first failed ancestor is named, however far up it is.
pub(crate) fn dependency_failed(id: DriverTaskId, name: &str, failed: &Outcome) -> Outcome {
    match failed {
        Outcome::DependencyFailed { .. } => failed.clone(),
        other => Outcome::DependencyFailed {
            task: id.get(),
            name: name.to_string(),
            outcome: Box::new(other.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitzen_common::task::encode_value;

    fn call(id: u64) -> Call {
        Call {
            id: DriverTaskId::new(id),
            name: "merge",
            signature: "fn merge(u64, u64) -> u64",
            fingerprint: 1,
            args: Bytes::new(),
            timeout: None,
            retries: 0,
            unrunnable_limit: None,
            request: None,
            label: None,
            stream: false,
        }
    }

    fn value(v: u64) -> Bytes {
        encode_value(&v).expect("encodes")
    }

    #[test]
    fn a_task_is_released_with_its_arguments_spliced_once_every_input_is_in() {
        let mut g = Graph::default();
        let (a, b) = (DriverTaskId::new(1), DriverTaskId::new(2));
        let waits = vec![(a, Wait::Input(0)), (b, Wait::Input(1))];
        g.park(call(3), Framing::Array, vec![None, None], waits);
        let mut out = Vec::new();
        g.settled(a, "load", &Outcome::Value(value(5)), &mut out);
        assert!(out.is_empty(), "one input is still out");
        g.settled(b, "load", &Outcome::Value(value(7)), &mut out);
        let [Consequence::Released(released)] = &out[..] else { panic!("{out:?}") };
        assert_eq!(released.args, encode_value(&(5u64, 7u64)).expect("encodes"));
        assert!(g.is_empty());
    }

    #[test]
    fn a_failure_fails_its_waiters_naming_the_first_failed_ancestor() {
        let mut g = Graph::default();
        let (a, b, c) = (DriverTaskId::new(1), DriverTaskId::new(2), DriverTaskId::new(3));
        g.park(call(2), Framing::Single, vec![None], vec![(a, Wait::Input(0))]);
        g.park(call(3), Framing::Single, vec![Some(value(1))], vec![(b, Wait::After)]);
        let mut out = Vec::new();
        let crash = Outcome::Cancelled { reason: "asked".into() };
        g.settled(a, "load", &crash, &mut out);
        let [Consequence::Failed(task, failed)] = &out[..] else { panic!("{out:?}") };
        assert_eq!(*task, b);
        // The table settles b with that outcome, which reaches c.
        let failed = failed.clone();
        out.clear();
        g.settled(b, "clean", &failed, &mut out);
        let [Consequence::Failed(task, Outcome::DependencyFailed { task: first, name, .. })] =
            &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!((*task, *first, name.as_str()), (c, 1, "load"));
        assert!(g.is_empty());
    }

    #[test]
    fn after_any_runs_whatever_the_end() {
        let mut g = Graph::default();
        let a = DriverTaskId::new(1);
        g.park(call(2), Framing::Single, vec![Some(value(1))], vec![(a, Wait::AfterAny)]);
        let mut out = Vec::new();
        g.settled(a, "load", &Outcome::TimedOut { timeout_ms: 5 }, &mut out);
        assert!(matches!(&out[..], [Consequence::Released(c)] if c.args == value(1)), "{out:?}");
    }
}
