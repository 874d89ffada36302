//! What running jobs hold of the pool's capacity: each worker's front job holds its request
//! (a plain job, one CPU) from when it is sent to an idle worker, or the job before it is
//! answered, until it is answered or its worker dies; and the devices of counted resources
//! ([`FreeDevices`]) a job holding some was given.

use std::collections::BTreeSet;

use blitzen_protocol::Request;

use super::{RunTask, Scheduler, Worker};

/// The devices of each counted resource no running job holds: a job holding `gpu=1` is given
/// the lowest free one, and two running jobs never share one.
#[derive(Debug, Default)]
pub(super) struct FreeDevices {
    free: Vec<(String, BTreeSet<u32>)>,
}

impl FreeDevices {
    /// Every device of every resource, free.
    pub(super) fn new(all: Vec<(String, Vec<u32>)>) -> Self {
        Self {
            free: all
                .into_iter()
                .map(|(name, indices)| (name, indices.into_iter().collect()))
                .collect(),
        }
    }

    /// The lowest free devices for what `request` holds of each resource.
    pub(super) fn take(&mut self, request: &Request) -> Vec<(String, Vec<u32>)> {
        let mut given = Vec::new();
        for (name, count) in &request.custom {
            let Some((_, free)) = self.free.iter_mut().find(|(n, _)| n == name) else { continue };
            let taken: Vec<u32> = free.iter().copied().take(*count as usize).collect();
            for index in &taken {
                free.remove(index);
            }
            given.push((name.clone(), taken));
        }
        given
    }

    /// Gives back what [`take`](Self::take) gave.
    pub(super) fn give_back(&mut self, held: &[(String, Vec<u32>)]) {
        for (name, indices) in held {
            if let Some((_, free)) = self.free.iter_mut().find(|(n, _)| n == name) {
                free.extend(indices.iter().copied());
            }
        }
    }
}

/// What a job without a request holds.
static PLAIN: Request = Request::PLAIN;

impl Scheduler {
    /// Whether `job` may start now on an idle worker.
    pub(super) fn fits(&self, job: &RunTask) -> bool {
        self.usage.fits(&self.capacity, job.request.as_deref().unwrap_or(&PLAIN))
    }

    /// The front job of `w` starts holding its share of the capacity.
    pub(super) fn hold(&mut self, slot: usize) {
        let Some(w) = self.workers[slot].as_mut() else { return };
        let Some(job) = w.inflight.front() else { return };
        if !w.holding {
            w.holding = true;
            let request = job.request.as_deref().unwrap_or(&PLAIN);
            self.usage.hold(&self.capacity, request);
        }
    }

    /// The front job of `w` gives back its share (it was answered, or the worker died).
    pub(super) fn release(&mut self, w: &mut Worker) {
        if let Some(job) = w.inflight.front()
            && std::mem::take(&mut w.holding)
        {
            let request = job.request.as_deref().unwrap_or(&PLAIN);
            self.usage.release(&self.capacity, request);
            self.devices.give_back(&job.devices);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_go_lowest_first_and_come_back() {
        let mut devices =
            FreeDevices::new(vec![("gpu".into(), vec![2, 3, 5]), ("fpga".into(), vec![0])]);
        let gpu = |n| Request { cpus: 1, memory: None, custom: vec![("gpu".to_string(), n)] };
        let a = devices.take(&gpu(1));
        let b = devices.take(&gpu(2));
        assert_eq!(
            (a.clone(), b.clone()),
            (vec![("gpu".into(), vec![2])], vec![("gpu".into(), vec![3, 5])])
        );
        assert_eq!(devices.take(&gpu(1)), vec![("gpu".into(), vec![])], "none left");
        devices.give_back(&a);
        assert_eq!(devices.take(&gpu(1)), vec![("gpu".into(), vec![2])]);
        let plain = Request { cpus: 2, memory: None, custom: Vec::new() };
        assert!(devices.take(&plain).is_empty());
    }
}
