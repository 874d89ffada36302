//! What an autoscaler asks the core at each of its ticks ([`Demand`]): how many ready tasks an
//! agent of the shape it asks for could run that no connected agent holds, and what each
//! connected agent is doing.

use blitzen_protocol::Capacity;

use super::Core;

/// The work an autoscaler could ask agents for, and the agents there are.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Demand {
    /// Tasks queued at the server — not waiting for inputs, not held by an agent — that an
    /// agent of the shape could run.
    pub ready: u64,
    /// Queued tasks that ask for more than an agent of the shape offers.
    pub too_big: u64,
    /// Every connected agent.
    pub agents: Vec<AgentView>,
    /// The allocations whose agents connected since the last time it was asked (an agent may
    /// come and go between two asks).
    pub joined: Vec<String>,
}

/// A connected agent, as an autoscaler sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentView {
    /// The allocation it said it runs in (a Slurm job id); empty: none.
    pub allocation: String,
    /// Its host name.
    pub host: String,
    /// Whether it holds tasks.
    pub busy: bool,
    /// Whether it is leaving (it takes no more tasks).
    pub leaving: bool,
}

impl Core {
    /// The demand for agents of `shape` now.
    pub(super) fn demand(&mut self, shape: &Capacity) -> Demand {
        let (mut ready, mut too_big) = (0, 0);
        for d in self.drivers.values() {
            for (class, queue) in &d.queues {
                // Tasks that ended while queued leave dead keys until dispatch passes by.
                let live = queue.iter().filter(|&&key| self.tasks.get(key).is_some()).count();
                let fits = (self.kinds[class.index()].request.as_ref())
                    .is_none_or(|request| shape.shortfall(request).is_none());
                if fits {
                    ready += live as u64;
                } else {
                    too_big += live as u64;
                }
            }
        }
        let agents = (self.agents.values())
            .map(|a| AgentView {
                allocation: a.allocation.clone(),
                host: a.host.clone(),
                busy: !a.running.is_empty(),
                leaving: a.leaving.is_some(),
            })
            .collect();
        let joined = std::mem::take(&mut self.joined_allocations);
        Demand { ready, too_big, agents, joined }
    }
}
