//! Kinds of task: what a driver declares it runs, what an agent announces it has, and what a
//! driver is told when no connected agent has its kind's signature.

use serde::{Deserialize, Serialize};

use crate::resources::Request;

/// A kind of task: its registered name and signature — what an agent can run — and, as a driver
/// declares it, what its tasks hold while they run. Tasks of one name with different requests
/// are different kinds to a driver, and the same kind to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskKind {
    /// The registered name.
    pub name: String,
    /// The fingerprint of its signature.
    pub fingerprint: u64,
    /// The signature as written, for messages.
    #[serde(default)]
    pub signature: String,
    /// What each task of this kind holds while it runs; `None`: plain (one CPU). Always `None`
    /// in an agent's announcement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    /// What people see the tasks of this kind as, in the status, the failures, the dashboard
    /// and the metrics, when it is not `name`: the Python package's calls all run as the task
    /// `python`, and are labelled with their function (`__main__.f2`). Always `None` in an
    /// agent's announcement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Whether the driver sees what its tasks print as they run
    /// ([`ToDriver::Output`](super::ToDriver::Output)).
    /// Always `false` in an agent's announcement.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Its tasks' priority (see [`priority`](crate::priority)): higher first, 0 unless said.
    /// Always 0 in an agent's announcement.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl TaskKind {
    /// What people see its tasks as: its label, or its name.
    pub fn shown(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.name)
    }
}

/// No connected agent has a kind a driver declared with its signature, though some have a task
/// of its name ([`ToDriver::Mismatch`](super::ToDriver::Mismatch)): the Python package's calls
/// on agents with another Python, cloudpickle or blitzen version, say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    /// The task's name.
    pub task: String,
    /// Its signature as the driver declared it.
    pub signature: String,
    /// The connected agents that have a task of that name, each with its signature.
    pub agents: Vec<AgentSignature>,
}

/// A connected agent's signature of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSignature {
    /// The agent's host.
    pub host: String,
    /// Its signature of the task.
    pub signature: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no connected agent has `{}` as this driver does ({})",
            self.task, self.signature
        )?;
        for (i, agent) in self.agents.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}{} has {}", agent.host, agent.signature)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_names_each_agent_and_its_signature() {
        let m = Mismatch {
            task: "python".into(),
            signature: "fn python() [cloudpickle 3.1]".into(),
            agents: vec![
                AgentSignature {
                    host: "n1".into(),
                    signature: "fn python() [cloudpickle 0.0.0]".into(),
                },
                AgentSignature {
                    host: "n2".into(),
                    signature: "fn python() [cloudpickle 2.0]".into(),
                },
            ],
        };
        assert_eq!(
            m.to_string(),
            "no connected agent has `python` as this driver does (fn python() [cloudpickle 3.1]): \
             n1 has fn python() [cloudpickle 0.0.0]; n2 has fn python() [cloudpickle 2.0]"
        );
    }
}
