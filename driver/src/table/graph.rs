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

use std::sync::OnceLock;

use blitzen_common::inputs::{Framing, Part, Parts};
use blitzen_protocol::ids::DriverTaskId;
use blitzen_protocol::inputs::{InputPart, Inputs, Wait};
use blitzen_protocol::{Outcome, Report};
use bytes::Bytes;

use super::slots::Slot;
use super::{ByTask, ResultTable};
use crate::call::{Call, Releaser};
use crate::error::DispatchError;
use crate::results::{Predecessor, TaskId};

/// A task that a task sent to be held by the backend waits on, from that one's submission
/// until it is sent ([`ResultTable::fill_ended`]): how it ended, should it end meanwhile.
#[derive(Debug, Default)]
pub(super) struct Kept {
    /// Waits on it of tasks not sent yet.
    refs: u32,
    /// Its name and outcome, once it ended.
    ended: Option<(String, Outcome)>,
}

impl Kept {
    /// It ended as `name` with `outcome`.
    pub(super) fn ended(&mut self, name: &str, outcome: &Outcome) {
        self.ended = Some((name.to_string(), outcome.clone()));
    }
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

/// The table's [`Releaser`], once set.
#[derive(Default)]
pub(super) struct ReleaseTo(OnceLock<Releaser>);

impl std::fmt::Debug for ReleaseTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "ReleaseTo(set)" } else { "ReleaseTo(unset)" })
    }
}

/// The table's side of the graph: tasks registered to wait, released, cancelled.
impl ResultTable {
    /// Sends tasks whose inputs are all in; one the backend cannot take is settled.
    pub(super) fn release(&self, calls: Vec<Call>) {
        for call in calls {
            let id = call.id;
            let sent = match self.releaser.0.get() {
                Some(send) => send(call),
                None => Err(Outcome::Lost { reason: "nothing sends released tasks".into() }),
            };
            if let Err(outcome) = sent {
                self.settle(id, outcome);
            }
        }
    }

    /// Sets what sends released tasks; the first call wins.
    pub(crate) fn set_releaser(&self, releaser: Releaser) {
        let _ = self.releaser.0.set(releaser);
    }

    /// Registers a task that waits for others (see [`Graph`]), as [`register`](Self::register)
    /// does one that does not. Every task it names — in `parts` (results standing for
    /// arguments) and `after` — must be this table's and not fetched, or nothing is registered.
    /// Returns its id, and its call when the caller is to send it: with its arguments spliced
    /// when nothing is left to wait for, or — when `held_by_backend` — at once, with the
    /// [`Inputs`] it still waits for (what ended here already filled in).
    pub(crate) fn register_waiting<O>(
        &self,
        task: &'static str,
        mut call: Call,
        parts: Parts,
        after: &[Predecessor],
        held_by_backend: bool,
    ) -> Result<(TaskId<O>, Option<Call>), DispatchError> {
        let mut st = self.lock();
        let mut values = Vec::with_capacity(parts.parts.len());
        let mut waits = Vec::new();
        let mut failed = None;
        let waited = (parts.parts.iter().enumerate())
            .filter_map(|(i, part)| match part {
                Part::Result { origin, seq } => Some((*origin, *seq, Wait::Input(i))),
                _ => None,
            })
            .chain(
                after
                    .iter()
                    .map(|p| (p.origin, p.seq, if p.any { Wait::AfterAny } else { Wait::After })),
            );
        for (origin, seq, wait) in waited {
            if origin != st.origin || seq == 0 || seq >= st.next {
                return Err(DispatchError::UnknownTask(seq));
            }
            let on = DriverTaskId::new(seq);
            match (st.slots.get(seq), wait) {
                (Some(Slot::Pending(_)), _) => waits.push((on, wait)),
                (Some(Slot::Done(r)), _) => match (&r.run.outcome, wait) {
                    (Outcome::Value(_), _) | (_, Wait::AfterAny) => {}
                    (other, _) => {
                        failed.get_or_insert_with(|| dependency_failed(on, &r.task, other));
                    }
                },
                // Fetched: it ended, which is all `after_any` waits for.
                (_, Wait::AfterAny) => {}
                _ => return Err(DispatchError::AlreadyFetched(seq)),
            }
        }
        // The parts that are values the backend stores (shared), by their number there.
        let mut stored: Vec<Option<u64>> = Vec::new();
        for (i, part) in parts.parts.into_iter().enumerate() {
            values.push(match part {
                Part::Value(bytes) => Some(bytes),
                Part::Shared { id, bytes } => {
                    stored.resize(i + 1, None);
                    stored[i] = Some(id);
                    Some(bytes)
                }
                Part::Result { seq, .. } => match st.slots.get(seq) {
                    Some(Slot::Done(r)) => match &r.run.outcome {
                        Outcome::Value(bytes) => Some(bytes.clone()),
                        _ => Some(Bytes::new()),
                    },
                    _ => None,
                },
                Part::Unencodable(_) => Some(Bytes::new()),
            });
        }
        let seq = st.next;
        st.next += 1;
        let id = TaskId::new(st.origin, seq);
        let kind = st.kinds.id(task, call.signature);
        st.slots.insert(seq, Slot::Pending(kind));
        st.pending += 1;
        call.id = id.task();
        let settled = st.closed.clone().or(failed);
        // Sent with its inputs part by part: when the backend holds tasks until their inputs
        // are in, or when it has only shared values to put in (which a backend that waits for
        // nothing hands over as files). A task that waits here is parked with their bytes.
        let as_inputs = settled.is_none()
            && if held_by_backend {
                !waits.is_empty() || !stored.is_empty()
            } else {
                waits.is_empty() && !stored.is_empty()
            };
        if settled.is_none() && (!waits.is_empty() || as_inputs) {
            if as_inputs {
                for &(on, _) in &waits {
                    st.kept.entry(on).or_default().refs += 1;
                }
                let framing = parts.framing;
                let parts = (values.into_iter().enumerate())
                    .map(|(i, v)| match (stored.get(i).copied().flatten(), v) {
                        (Some(shared), _) => InputPart::Shared(shared),
                        (None, Some(bytes)) => InputPart::Value(bytes),
                        (None, None) => InputPart::Result(
                            waits.iter().find(|w| w.1 == Wait::Input(i)).map_or(call.id, |w| w.0),
                        ),
                    })
                    .collect();
                let after = (waits.iter())
                    .filter_map(|&(on, wait)| match wait {
                        Wait::Input(_) => None,
                        Wait::After => Some((on, false)),
                        Wait::AfterAny => Some((on, true)),
                    })
                    .collect();
                call.inputs = Some(Box::new(Inputs { framing, parts, after }));
                return Ok((id, Some(call)));
            }
            st.graph.park(call, parts.framing, values, waits);
            return Ok((id, None));
        }
        drop(st);
        if let Some(outcome) = settled {
            self.settle(id.task(), outcome);
            return Ok((id, None));
        }
        let values: Vec<Bytes> = values.into_iter().map(Option::unwrap_or_default).collect();
        call.args = Parts::splice(&parts.framing, &values);
        Ok((id, Some(call)))
    }

    /// A task sent with inputs for the backend to hold ([`Backend::holds_inputs`]), on its
    /// way out: the inputs whose task ended here since it was submitted are filled in now (the
    /// server forgets a result once it is acknowledged, and this one may be sent after); with
    /// all of them in, its arguments are spliced and it goes as any other. `Err` with the
    /// outcome to settle it with when one of those failed.
    ///
    /// [`Backend::holds_inputs`]: crate::Backend::holds_inputs
    pub(crate) fn fill_ended(&self, call: &mut Call) -> Result<(), Outcome> {
        let Some(inputs) = call.inputs.as_mut() else { return Ok(()) };
        let waits: Vec<(DriverTaskId, Wait)> = inputs.waits().collect();
        let mut failed = None;
        {
            let mut st = self.lock();
            for (on, wait) in waits {
                let Some(kept) = st.kept.get_mut(&on) else { continue };
                kept.refs = kept.refs.saturating_sub(1);
                let ended = if kept.refs == 0 {
                    st.kept.remove(&on).and_then(|k| k.ended)
                } else {
                    kept.ended.clone()
                };
                let Some((name, outcome)) = ended else { continue };
                let value = match &outcome {
                    Outcome::Value(bytes) => Some(bytes),
                    _ => None,
                };
                if !inputs.meet(on, wait, value) && failed.is_none() {
                    failed = Some(dependency_failed(on, &name, &outcome));
                }
            }
        }
        if let Some(outcome) = failed {
            return Err(outcome);
        }
        if inputs.is_ready() && !inputs.has_shared() {
            call.args = inputs.spliced();
            call.inputs = None;
        }
        Ok(())
    }

    /// Settles those of `ids` still waiting for others (they were never sent) with `outcome`;
    /// returns the others.
    pub(crate) fn cancel_waiting(
        &self,
        ids: Vec<DriverTaskId>,
        outcome: &Outcome,
    ) -> Vec<DriverTaskId> {
        let (waiting, sent): (Vec<DriverTaskId>, Vec<DriverTaskId>) = {
            let st = self.lock();
            if st.graph.is_empty() {
                return ids;
            }
            ids.into_iter().partition(|&id| st.graph.is_parked(id))
        };
        if !waiting.is_empty() {
            self.complete(
                waiting.into_iter().map(|id| Report::unstarted(id, outcome.clone())).collect(),
            );
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blitzen_common::task::encode_value;

    fn call(id: u64) -> Call {
        Call::plain(DriverTaskId::new(id), "merge", "fn merge(u64, u64) -> u64")
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
