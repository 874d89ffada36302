//! Agents that come and go with the work: the server asks a scheduler for agents when ready
//! tasks wait and no agent can take them, and the agents leave by themselves when idle or
//! before their time limit (`blitzen-client --idle-timeout`, `--time-limit`).
//!
//! Each tick (every [`AutoscaleConfig::interval`]) the autoscaler lists the allocations it asked
//! for that the scheduler still has, asks the core for the demand — ready tasks an agent of its
//! shape could run, not those waiting on inputs or held by an agent — and asks for as many agents
//! as those need beyond the ones pending or starting, up to [`AutoscaleConfig::max_agents`].
//! Pending allocations are withdrawn when no ready task is left for them. Failed submissions
//! back off, and repeated failures pause it (`policy`) until `blitzen-server resume` (or a
//! restart). When the server stops, it withdraws
//! every allocation it holds.
//!
//! - this file: [`AutoscaleConfig`], the [`Backend`] trait a scheduler implements (the commands
//!   that ask it), and the loop, which runs those commands.
//! - [`slurm`]: [`Slurm`](slurm::Slurm), agents as Slurm batch jobs.
//! - `policy` (private): how many agents to ask for, back-off and pause, without a scheduler.

mod policy;
pub mod slurm;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blitzen_protocol::Capacity;
use blitzen_protocol::status::{AllocationStatus, AutoscaleStatus};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::core::{Demand, Event};
use policy::{Count, Failures, agents_to_ask, backoff};

/// How the server asks for agents.
#[derive(Debug, Clone)]
pub struct AutoscaleConfig {
    /// Allocations held at most at once (pending and running).
    pub max_agents: u32,
    /// Workers of each agent (and CPUs asked of the scheduler for it).
    pub agent_workers: u32,
    /// An allocation's time limit; its agent stops taking tasks that would outlast it, and
    /// leaves, a margin before.
    pub agent_time_limit: Duration,
    /// An agent with nothing to run for this long leaves.
    pub idle_timeout: Duration,
    /// Time between two decisions.
    pub interval: Duration,
    /// Print what would be submitted; submit nothing.
    pub dry_run: bool,
    /// Arguments for the scheduler's submission (`sbatch`), as given after `--`.
    pub scheduler_args: Vec<String>,
    /// The agent's program and the arguments before its flags (`blitzen-client`, or a program
    /// of its own that takes the same flags: `my-app agent`).
    pub agent_command: Vec<String>,
    /// Where the agents find the server (`--address-file`), on a file system they share.
    pub address_file: PathBuf,
    /// The agents' secret, as a file they can read; `None`: none.
    pub secret_file: Option<PathBuf>,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        Self {
            max_agents: 10,
            agent_workers: 1,
            agent_time_limit: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(300),
            interval: Duration::from_secs(5),
            dry_run: false,
            scheduler_args: Vec::new(),
            agent_command: vec![slurm::default_agent_program().display().to_string()],
            address_file: PathBuf::from("blitzen.address"),
            secret_file: None,
        }
    }
}

/// Whether a scheduler has started an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for resources.
    Pending,
    /// Started (its agent may not have connected yet).
    Running,
}

/// A scheduler that runs agents, as the commands that ask it (program and arguments) and how
/// to read what they print: the autoscaler runs them, each within [`COMMAND_TIMEOUT`]. One
/// allocation runs one agent, which names it (`--allocation`). Slurm is [`slurm::Slurm`]; a
/// Kubernetes back end would make each allocation a pod of the agents (raising their replica
/// count) named by the pod's name.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Its name in logs and the status (`slurm`).
    fn name(&self) -> &'static str;
    /// The command that asks for one agent.
    fn submit(&self) -> Vec<String>;
    /// The id of the allocation `submit` asked for, from what it printed.
    fn submitted(&self, stdout: &str) -> Result<String, String>;
    /// The command that lists the allocations it asked for that the scheduler still has.
    fn list(&self) -> Vec<String>;
    /// Those allocations, from what `list` printed.
    fn listed(&self, stdout: &str) -> Vec<(String, Phase)>;
    /// The command that withdraws these allocations.
    fn cancel(&self, ids: &[String]) -> Vec<String>;
}

/// The longest a scheduler's command may take (a scheduler that does not answer): it is killed
/// after that, and the call counts as failed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A command as a shell would take it: the program, then each argument quoted.
pub(crate) fn describe(command: &[String]) -> String {
    let mut words = command.iter();
    let program = words.next().cloned().unwrap_or_default();
    std::iter::once(program).chain(words.map(|w| slurm::quoted(w))).collect::<Vec<_>>().join(" ")
}

/// Runs a scheduler's command (without blocking a thread) within [`COMMAND_TIMEOUT`]: what it
/// printed, or what went wrong in one line.
async fn run_command(command: Vec<String>) -> Result<String, String> {
    let Some((program, args)) = command.split_first() else {
        return Err("an empty command".into());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(COMMAND_TIMEOUT, child).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("cannot run {program}: {e}")),
        Err(_) => return Err(format!("{program} did not answer within {COMMAND_TIMEOUT:?}")),
    };
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let said = said.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    Err(format!("{program} failed ({}): {said}", out.status))
}

/// One allocation asked for.
#[derive(Debug)]
struct Allocation {
    asked_at: Instant,
    phase: Phase,
    /// Its agent has connected.
    connected: bool,
}

/// The autoscaler between ticks.
struct Autoscaler {
    config: AutoscaleConfig,
    backend: Arc<dyn Backend>,
    events: mpsc::UnboundedSender<Event>,
    /// Its allocations the scheduler has, by id (numeric ids sort as numbers).
    allocations: BTreeMap<(usize, String), Allocation>,
    /// Allocations it withdrew: their end is no failure.
    withdrawn: HashSet<String>,
    failures: Failures,
    /// No submission before this, after a failure.
    next_try: Option<Instant>,
    submitted: u64,
    decision: String,
    decided_at: Instant,
    /// Dry run: the allocations it pretends to hold.
    pretended: u64,
}

/// Runs the autoscaler until `shutdown`, then withdraws every allocation it holds.
pub(crate) async fn run(
    config: AutoscaleConfig,
    backend: Arc<dyn Backend>,
    events: mpsc::UnboundedSender<Event>,
    mut resumed: mpsc::UnboundedReceiver<()>,
    shutdown: CancellationToken,
) {
    info!(
        backend = backend.name(),
        max_agents = config.max_agents,
        agent_workers = config.agent_workers,
        agent_time_limit = %format_args!("{}s", config.agent_time_limit.as_secs_f64()),
        idle_timeout = %format_args!("{}s", config.idle_timeout.as_secs_f64()),
        dry_run = config.dry_run,
        "autoscaling: agents are asked for as ready tasks need them"
    );
    let mut ticks = tokio::time::interval(config.interval.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scaler = Autoscaler {
        config,
        backend,
        events,
        allocations: BTreeMap::new(),
        withdrawn: HashSet::new(),
        failures: Failures::default(),
        next_try: None,
        submitted: 0,
        decision: "none yet".into(),
        decided_at: Instant::now(),
        pretended: 0,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => scaler.tick().await,
            Some(()) = resumed.recv() => scaler.resume(),
        }
    }
    scaler.withdraw_all().await;
}

/// How a map of allocations is keyed: numeric ids in their order.
fn key(id: &str) -> (usize, String) {
    (id.len(), id.to_string())
}

impl Autoscaler {
    async fn tick(&mut self) {
        let now = Instant::now();
        if !self.config.dry_run {
            match run_command(self.backend.list()).await {
                Ok(out) => self.listed(self.backend.listed(&out)),
                Err(e) => {
                    let decision = format!("cannot list the allocations: {e}");
                    // Once per cause, not at every tick.
                    if decision != self.decision {
                        warn!(error = %e, "autoscaling: cannot list the allocations; deciding nothing until it can");
                    }
                    self.decide(decision, now);
                    return self.publish(&Demand::default(), now);
                }
            }
        }
        let shape = Capacity::new(self.config.agent_workers, u64::MAX);
        let (reply, answer) = oneshot::channel();
        if self.events.send(Event::Demand { shape, reply }).is_err() {
            return;
        }
        let Ok(demand) = answer.await else { return };
        for id in &demand.joined {
            if let Some(a) = self.allocations.get_mut(&key(id))
                && !a.connected
            {
                a.connected = true;
                self.failures.allocation_started();
            }
        }
        let live: HashSet<&str> = demand.agents.iter().map(|a| a.allocation.as_str()).collect();
        for (k, a) in &mut self.allocations {
            if live.contains(k.1.as_str()) {
                a.connected = true;
            }
        }
        self.scale(&demand, now).await;
        self.publish(&demand, now);
    }

    /// Takes in what the scheduler still has: allocations that started, and those that ended.
    fn listed(&mut self, listed: Vec<(String, Phase)>) {
        let listed: HashMap<String, Phase> = listed.into_iter().collect();
        let ended: Vec<(usize, String)> =
            (self.allocations.keys()).filter(|k| !listed.contains_key(&k.1)).cloned().collect();
        for k in ended {
            let Some(a) = self.allocations.remove(&k) else { continue };
            let job = k.1;
            if self.withdrawn.remove(&job) {
                debug!(%job, "autoscaling: a withdrawn allocation is gone");
            } else if a.connected {
                info!(%job, "autoscaling: allocation ended");
            } else {
                warn!(%job, "autoscaling: allocation ended before its agent connected (see its output file)");
                let paused = self.failures.paused.is_some();
                self.failures.allocation_failed(&job);
                self.announce_pause(paused);
            }
        }
        for (job, phase) in listed {
            match self.allocations.get_mut(&key(&job)) {
                Some(a) => {
                    if a.phase == Phase::Pending && phase == Phase::Running {
                        info!(%job, "autoscaling: allocation started");
                    }
                    a.phase = phase;
                }
                None if !self.withdrawn.contains(&job) => {
                    // Asked for by this server before it restarted (the jobs carry its name).
                    info!(%job, "autoscaling: an allocation from before the restart is counted");
                    let a = Allocation { asked_at: Instant::now(), phase, connected: false };
                    self.allocations.insert(key(&job), a);
                }
                None => {}
            }
        }
    }

    /// An observer's order: failures are forgotten, and the next tick decides afresh.
    fn resume(&mut self) {
        let was = self.failures.paused.take();
        info!(was_paused = was.as_deref().unwrap_or("no"), "autoscaling resumed by an observer");
        self.failures = Failures::default();
        self.next_try = None;
    }

    /// Logs a pause that began with the last failure.
    fn announce_pause(&self, was_paused: bool) {
        if let (false, Some(reason)) = (was_paused, &self.failures.paused) {
            error!(%reason, "autoscaling paused: no more agents are asked for until `blitzen-server resume` or a restart");
        }
    }

    fn decide(&mut self, decision: String, now: Instant) {
        if decision != self.decision {
            debug!(%decision, "autoscaling");
        }
        self.decision = decision;
        self.decided_at = now;
    }

    /// Asks for the agents the demand needs, or withdraws pending ones nothing needs.
    async fn scale(&mut self, demand: &Demand, now: Instant) {
        if let Some(reason) = &self.failures.paused {
            return self.decide(format!("paused: {reason}"), now);
        }
        if let Some(at) = self.next_try.filter(|&at| now < at) {
            let wait = at.saturating_duration_since(now).as_secs_f64();
            let failed = self.failures.submissions;
            return self.decide(
                format!("backing off {wait:.1}s more after {failed} failed submissions"),
                now,
            );
        }
        let coming = self.allocations.values().filter(|a| !a.connected).count() as u32;
        let count = Count {
            ready: demand.ready,
            agent_workers: self.config.agent_workers,
            coming,
            held: self.allocations.len() as u32,
            max_agents: self.config.max_agents,
        };
        let (ask, why) = agents_to_ask(count);
        if demand.ready == 0 {
            return self.withdraw_pending(why, now).await;
        }
        let mut asked = Vec::new();
        for _ in 0..ask {
            let submitted = if self.config.dry_run {
                println!("{}", describe(&self.backend.submit()));
                self.pretended += 1;
                Ok(format!("dry-run-{}", self.pretended))
            } else {
                let out = run_command(self.backend.submit()).await;
                out.and_then(|out| self.backend.submitted(&out))
            };
            match submitted {
                Ok(job) => {
                    info!(%job, backend = self.backend.name(), dry_run = self.config.dry_run, "autoscaling: asked for an agent");
                    self.failures.submitted();
                    self.submitted += 1;
                    let a = Allocation { asked_at: now, phase: Phase::Pending, connected: false };
                    self.allocations.insert(key(&job), a);
                    asked.push(job);
                }
                Err(e) => {
                    let paused = self.failures.paused.is_some();
                    self.failures.submission_failed(&e);
                    let wait = backoff(self.config.interval, self.failures.submissions);
                    self.next_try = Some(now + wait);
                    warn!(error = %e, retry_in = %format_args!("{:.1}s", wait.as_secs_f64()), "autoscaling: submission failed");
                    self.announce_pause(paused);
                    return self.decide(format!("{why}; the submission failed: {e}"), now);
                }
            }
        }
        if !asked.is_empty() {
            info!(decision = %why, jobs = %asked.join(","), "autoscaling");
        }
        self.decide(why, now);
    }

    /// Withdraws the allocations not started yet: no ready task is left for them.
    async fn withdraw_pending(&mut self, why: String, now: Instant) {
        let pending: Vec<String> = (self.allocations.iter())
            .filter(|(_, a)| a.phase == Phase::Pending && !a.connected)
            .map(|(k, _)| k.1.clone())
            .collect();
        if pending.is_empty() || self.config.dry_run {
            return self.decide(why, now);
        }
        match run_command(self.backend.cancel(&pending)).await {
            Ok(_) => {
                info!(jobs = %pending.join(","), "autoscaling: pending allocations withdrawn: no ready task is left for them");
                for job in pending {
                    self.allocations.remove(&key(&job));
                    self.withdrawn.insert(job);
                }
                self.decide(format!("{why}: pending allocations withdrawn"), now);
            }
            Err(e) => {
                warn!(error = %e, "autoscaling: cannot withdraw pending allocations");
                self.decide(format!("{why}; withdrawing the pending failed: {e}"), now);
            }
        }
    }

    /// Withdraws every allocation it holds (the server stops).
    async fn withdraw_all(&mut self) {
        let ids: Vec<String> = self.allocations.keys().map(|k| k.1.clone()).collect();
        if ids.is_empty() || self.config.dry_run {
            return;
        }
        let shown = ids.join(",");
        match run_command(self.backend.cancel(&ids)).await {
            Ok(_) => {
                info!(jobs = %shown, "autoscaling: every allocation withdrawn as the server stops")
            }
            Err(e) => {
                warn!(jobs = %shown, error = %e, "autoscaling: cannot withdraw the allocations")
            }
        }
    }

    /// Tells the core the autoscaler's state, for the status.
    fn publish(&self, demand: &Demand, now: Instant) {
        let agents: HashMap<&str, &crate::core::AgentView> =
            demand.agents.iter().map(|a| (a.allocation.as_str(), a)).collect();
        let mut status = AutoscaleStatus {
            backend: self.backend.name().into(),
            dry_run: self.config.dry_run,
            max_agents: self.config.max_agents,
            agent_workers: self.config.agent_workers,
            pending: 0,
            starting: 0,
            busy: 0,
            idle: 0,
            draining: 0,
            ready: demand.ready,
            submitted: self.submitted,
            failed_submissions: self.failures.submissions,
            failed_allocations: self.failures.allocations,
            paused: self.failures.paused.clone(),
            backoff_ms: (self.next_try)
                .map_or(0, |at| at.saturating_duration_since(now).as_millis() as u64),
            last_decision: self.decision.clone(),
            last_decision_ms: now.saturating_duration_since(self.decided_at).as_millis() as u64,
            allocations: Vec::new(),
        };
        for ((_, id), a) in &self.allocations {
            let agent = agents.get(id.as_str());
            let state = match (agent, a.phase) {
                (Some(agent), _) if agent.leaving => "draining",
                (Some(agent), _) if agent.busy => "busy",
                (Some(_), _) => "idle",
                (None, Phase::Pending) => "pending",
                (None, Phase::Running) if a.connected => "ending",
                (None, Phase::Running) => "starting",
            };
            match state {
                "draining" => status.draining += 1,
                "busy" => status.busy += 1,
                "idle" => status.idle += 1,
                "pending" => status.pending += 1,
                "starting" => status.starting += 1,
                _ => {}
            }
            status.allocations.push(AllocationStatus {
                id: id.clone(),
                state: state.into(),
                age_ms: now.saturating_duration_since(a.asked_at).as_millis() as u64,
                host: agent.map(|a| a.host.clone()).unwrap_or_default(),
            });
        }
        let _ = self.events.send(Event::Autoscaled(Box::new(status)));
    }
}
