//! `/metrics`: the cluster in the Prometheus (OpenMetrics) text format.
//!
//! Each scrape fills a fresh registry of its own from the latest snapshot — no process-wide
//! registry, so several servers in one process (as in tests) never mix their numbers.

use std::sync::atomic::AtomicU64;

use blitzen_protocol::status::ClusterStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Agent {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentResource {
    agent: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskOutcome {
    task: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Session {
    session: String,
    state: &'static str,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

/// The metrics of `status`, as text.
pub(crate) fn render(status: &ClusterStatus) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("blitzen");
    let s = &status.server;
    gauge(&mut registry, "tasks_queued", "Tasks waiting for an agent", s.queued);
    gauge(&mut registry, "tasks_waiting", "Tasks waiting for other tasks' results", s.waiting);
    gauge(&mut registry, "shared_values", "Values shared among tasks held", s.shared_values);
    gauge(&mut registry, "shared_bytes", "Bytes of the shared values held", s.shared_bytes);
    let sent: Counter = Counter::default();
    sent.inc_by(s.shared_bytes_sent);
    registry.register(
        "shared_bytes_sent",
        "Bytes of shared values sent to agents since the server started",
        sent,
    );
    gauge(&mut registry, "tasks_prefetched", "Tasks waiting at agents for a worker", s.prefetched);
    gauge(&mut registry, "tasks_running", "Tasks running on a worker", s.running);
    gauge(
        &mut registry,
        "results_held",
        "Results not yet fetched by their drivers",
        s.results_held,
    );
    gauge(&mut registry, "uptime_seconds", "Seconds since the server started", s.uptime_ms / 1000);
    gauge(&mut registry, "agents_connected", "Connected agents", status.agents.len() as u64);
    let throughput: Gauge<f64, AtomicU64> = Gauge::default();
    throughput.set(s.throughput);
    registry.register(
        "throughput_tasks_per_second",
        "Tasks finished per second over the last minute",
        throughput,
    );
    let finished = Family::<Outcome, Counter>::default();
    let done = s.finished.saturating_sub(s.failed + s.cancelled);
    for (outcome, n) in [("done", done), ("failed", s.failed), ("cancelled", s.cancelled)] {
        finished.get_or_create(&Outcome { outcome }).inc_by(n);
    }
    registry.register("tasks_finished", "Tasks finished since the server started", finished);
    let workers = Family::<Agent, Gauge>::default();
    let busy = Family::<Agent, Gauge>::default();
    let agent_done = Family::<Agent, Counter>::default();
    let agent_failed = Family::<Agent, Counter>::default();
    let cache_used = Family::<Agent, Gauge>::default();
    for a in &status.agents {
        let labels = Agent { agent: a.host.clone() };
        workers.get_or_create(&labels).set(i64::from(a.workers));
        busy.get_or_create(&labels).set(i64::from(a.busy));
        agent_done.get_or_create(&labels).inc_by(a.done);
        agent_failed.get_or_create(&labels).inc_by(a.failed);
        cache_used.get_or_create(&labels).set(i64::try_from(a.cache_used).unwrap_or(i64::MAX));
    }
    registry.register("agent_workers", "Worker processes of each agent", workers);
    registry.register("agent_busy_workers", "Workers of each agent running a task", busy);
    registry.register("agent_tasks_done", "Tasks each agent finished", agent_done);
    registry.register("agent_tasks_failed", "Tasks that failed on each agent", agent_failed);
    registry.register(
        "agent_cache_bytes",
        "Bytes of shared values in each agent's cache (--cache-size bounds it)",
        cache_used,
    );
    let offered = Family::<AgentResource, Gauge>::default();
    let used = Family::<AgentResource, Gauge>::default();
    for a in &status.agents {
        let mut amounts = vec![
            ("cpu".to_string(), u64::from(a.capacity.cpus), u64::from(a.used.cpus)),
            ("memory_bytes".to_string(), a.capacity.memory, a.used.memory),
        ];
        for (name, count) in &a.capacity.custom {
            amounts.push((name.clone(), *count, a.used.custom(name)));
        }
        for (resource, has, holds) in amounts {
            let labels = AgentResource { agent: a.host.clone(), resource };
            offered.get_or_create(&labels).set(i64::try_from(has).unwrap_or(i64::MAX));
            used.get_or_create(&labels).set(i64::try_from(holds).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "agent_resource",
        "What each agent offers its tasks: CPUs, memory in bytes, counted resources",
        offered,
    );
    registry.register(
        "agent_resource_used",
        "What the running tasks of each agent hold, as it last reported them",
        used,
    );
    let sessions = Family::<Session, Gauge>::default();
    for d in &status.sessions {
        for (state, n) in [
            ("queued", d.queued),
            ("waiting", d.waiting),
            ("prefetched", d.prefetched),
            ("running", d.running),
            ("done", d.done),
            ("failed", d.failed),
            ("cancelled", d.cancelled),
        ] {
            let labels = Session { session: d.name.clone(), state };
            sessions.get_or_create(&labels).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    registry.register("session_tasks", "Tasks of each session, by state", sessions);
    let by_task = Family::<TaskOutcome, Counter>::default();
    for t in &status.tasks {
        for (outcome, n) in [("done", t.done), ("failed", t.failed), ("cancelled", t.cancelled)] {
            by_task.get_or_create(&TaskOutcome { task: t.task.clone(), outcome }).inc_by(n);
        }
    }
    registry.register(
        "task_finished",
        "Tasks finished since the server started, by name (a Python call's is its function's)",
        by_task,
    );
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}
