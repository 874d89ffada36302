//! `Dispatcher`: Blitzen's multicore or distributed dispatcher, as the Python package drives it.
//!
//! Python hands in pickles and task numbers and gets back one tuple per result (see [`Row`]);
//! the package (`blitzen/_dispatch.py`) turns those into values and exceptions. Every wait
//! releases the interpreter lock and wakes every [`SLICE`] to let Python handle signals, so
//! Ctrl-C interrupts `get_results` and `join` with `KeyboardInterrupt`.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use blitzen::distributed::{AgentOptions, DistributedDispatcher, Secret};
use blitzen::{Capacity, Input, Needs, Output, Untyped, parse_size};
use blitzen::{DispatchError, Fetch, MulticoreDispatcher, RunOptions, TaskId, WorkerCommand};
use blitzen_common::needs::MAX_RESOURCES;
use blitzen_protocol::resources::check_name;
use bytes::Bytes;
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;

use crate::handles::{Completions, OutputReader, SLICE, SharedValue, Watch, seconds};
use crate::rows::{Row, row};
use crate::task;

enum Inner {
    Multicore(MulticoreDispatcher),
    Cluster(Box<DistributedDispatcher>),
}

/// Runs `$body` with `$d` bound to whichever dispatcher `$inner` holds: both have the same
/// methods.
macro_rules! on {
    ($inner:expr, |$d:ident| $body:expr) => {
        match $inner {
            Inner::Multicore($d) => $body,
            Inner::Cluster($d) => $body,
        }
    };
}

/// A multicore or distributed dispatcher of `python` tasks.
#[pyclass(module = "blitzen._native", frozen)]
pub(crate) struct Dispatcher {
    inner: Inner,
}

#[pymethods]
impl Dispatcher {
    /// A pool of `workers` worker processes, each running `command` (an interpreter entering
    /// the worker loop) with `env` added to its environment; returns once all are ready.
    /// `cpus`, `memory` and `resources` are what the running tasks may hold at once
    /// (default: one CPU per worker, the machine's memory, no counted resources). With
    /// `stream`, what the tasks print is sent as it comes, for the `output_reader`.
    #[staticmethod]
    #[pyo3(signature = (
        workers, command, env, cpus=None, memory=None, resources=None, stream=false, devices=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn multicore(
        py: Python<'_>,
        workers: usize,
        command: Vec<String>,
        env: Vec<(String, String)>,
        cpus: Option<u32>,
        memory: Option<Bound<'_, PyAny>>,
        resources: Option<Vec<(String, u64)>>,
        stream: bool,
        devices: Option<Vec<(String, Vec<u32>)>>,
    ) -> PyResult<Self> {
        task::named()?;
        let command = worker_command(command, env)?;
        let mut builder = MulticoreDispatcher::builder().workers(workers).worker_command(command);
        if let Some(cpus) = cpus {
            builder = builder.cpus(cpus);
        }
        if let Some(memory) = memory {
            builder = builder.memory(size(&memory, "memory")?);
        }
        for (name, count) in resources.unwrap_or_default() {
            builder = builder.resource(name, count);
        }
        for (name, indices) in devices.unwrap_or_default() {
            builder = builder.devices(name, indices);
        }
        let built = py.detach(|| builder.build()).map_err(dispatch_error)?;
        Ok(Self { inner: Inner::Multicore(streamed(built, stream)) })
    }

    /// A dispatcher for the server at `server` (`host` or `host:port`); nothing is contacted
    /// until the first task. `stream` as for `multicore`.
    #[staticmethod]
    #[pyo3(signature = (
        server, secret=None, plaintext=false, connect_timeout=None, allow_insecure=false,
        unrunnable_limit=None, stream=false
    ))]
    fn cluster(
        server: &str,
        secret: Option<Bound<'_, PyBytes>>,
        plaintext: bool,
        connect_timeout: Option<f64>,
        allow_insecure: bool,
        unrunnable_limit: Option<f64>,
        stream: bool,
    ) -> PyResult<Self> {
        task::named()?;
        let mut d = DistributedDispatcher::new(server)
            .insecure_plaintext(plaintext)
            .allow_insecure(allow_insecure);
        if let Some(secret) = secret {
            let secret = Secret::new(secret.as_bytes(), "the `secret` argument")
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            d = d.with_secret(secret);
        }
        if let Some(timeout) = connect_timeout {
            d = d.with_connect_timeout(seconds(timeout, "connect_timeout")?);
        }
        if let Some(limit) = unrunnable_limit {
            d = d.with_unrunnable_limit(seconds(limit, "unrunnable_limit")?);
        }
        Ok(Self { inner: Inner::Cluster(Box::new(streamed(d, stream))) })
    }

    /// Where the lines of streamed tasks wait (a dispatcher made with `stream`). Holding it
    /// does not keep the dispatcher alive; once it has shut down, `wait` returns `False`.
    fn output_reader(&self) -> OutputReader {
        OutputReader { inner: on!(&self.inner, |d| d.output_reader()) }
    }

    /// Submits a pickled call; returns its task number at once. `cpus`, `memory` (bytes, or a
    /// size such as `"4GiB"`) and `resources` (`{"gpu": 1}`) are what it holds while it runs.
    /// `label` is what people see the call as (`module.qualname` of its function). `inputs`:
    /// the numbers of tasks whose results the call takes (its pickle holds a placeholder for
    /// each, see `task`): it runs once they are in, or ends `DependencyFailed`; a number of
    /// a task whose result was fetched, or never issued, raises `KeyError`.
    #[pyo3(signature = (
        payload, timeout=None, retries=0, cpus=None, memory=None, resources=None, label=None,
        inputs=None, priority=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        payload: PyBackedBytes,
        timeout: Option<f64>,
        retries: u32,
        cpus: Option<i64>,
        memory: Option<Bound<'_, PyAny>>,
        resources: Option<Vec<(String, i64)>>,
        label: Option<String>,
        inputs: Option<Vec<Bound<'_, PyAny>>>,
        priority: Option<i32>,
    ) -> PyResult<u64> {
        let mut needs = needs(cpus, memory, resources)?;
        if let Some(priority) = priority {
            needs = needs.with_priority(priority);
        }
        let options = RunOptions {
            timeout: timeout.map(|t| seconds(t, "timeout")).transpose()?,
            retries,
            unrunnable_limit: None,
            needs,
            label: label.filter(|l| !l.is_empty()).map(|l| intern(truncated(l))),
        };
        let task = task::named()?;
        // The pickle travels in the Python object's own memory.
        let args = Bytes::from_owner(payload);
        let inputs = inputs.unwrap_or_default();
        if inputs.is_empty() {
            return Ok(on!(&self.inner, |d| d.run_named(task, args, options).seq()));
        }
        let submitted = on!(&self.inner, |d| {
            let mut parts = Vec::with_capacity(inputs.len());
            for input in &inputs {
                match input.cast::<SharedValue>() {
                    Ok(shared) => parts.push(Input::<Untyped>::part(&shared.get().inner)),
                    Err(_) => parts.push(Input::<Untyped>::part(d.id_of(input.extract::<u64>()?))),
                }
            }
            let parts = task::with_inputs(args, parts.into_iter());
            Ok::<_, PyErr>(d.run_named_parts(task, parts, options).map(|id| id.seq()))
        });
        submitted?.map_err(dispatch_error)
    }

    /// Waits for the tasks numbered `ids` (at most `timeout` seconds) and returns their rows
    /// in that order; `clear` removes them from the dispatcher.
    #[pyo3(signature = (ids, clear=true, timeout=None))]
    fn results<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<u64>,
        clear: bool,
        timeout: Option<f64>,
    ) -> PyResult<Vec<Row<'py>>> {
        let deadline =
            timeout.map(|t| seconds(t, "timeout")).transpose()?.map(|t| (t, Instant::now() + t));
        let ids: Vec<TaskId> = on!(&self.inner, |d| ids.iter().map(|&seq| d.id_of(seq)).collect());
        loop {
            let slice = match deadline {
                Some((_, at)) => at.saturating_duration_since(Instant::now()).min(SLICE),
                None => SLICE,
            };
            let fetch = Fetch { clear, timeout: Some(slice) };
            let fetched = py.detach(|| on!(&self.inner, |d| d.get_task_results(&ids, fetch)));
            match fetched {
                Ok(results) => return Ok(results.iter().map(|r| row(py, r)).collect()),
                Err(DispatchError::WaitTimedOut { pending, total, detail, .. }) => {
                    if let Some((limit, at)) = deadline
                        && Instant::now() >= at
                    {
                        return Err(waited_too_long(limit, pending, total, detail));
                    }
                    py.check_signals()?;
                }
                Err(e) => return Err(dispatch_error(e)),
            }
        }
    }

    /// Waits for every task, returns the rows of those not yet fetched in submission order,
    /// and shuts down.
    fn join<'py>(&self, py: Python<'py>) -> PyResult<Vec<Row<'py>>> {
        loop {
            match py.detach(|| on!(&self.inner, |d| d.join_within(SLICE))) {
                Ok(results) => return Ok(results.iter().map(|r| row(py, r)).collect()),
                Err(DispatchError::WaitTimedOut { .. }) => py.check_signals()?,
                Err(e) => return Err(dispatch_error(e)),
            }
        }
    }

    /// The tasks numbered `ids`, in the order they finish (for `imap_unordered`).
    fn completions(&self, ids: Vec<u64>) -> Completions {
        let inner = on!(&self.inner, |d| {
            let ids: Vec<TaskId> = ids.iter().map(|&seq| d.id_of(seq)).collect();
            d.completions(&ids)
        });
        Completions { inner: Mutex::new(inner) }
    }

    /// A value many calls take (a pickle), stored once: on a cluster sent to each machine once
    /// (see `blitzen::Dispatcher::share`). It is freed once its handle is gone and no task
    /// needs it.
    fn share(&self, pickle: PyBackedBytes) -> SharedValue {
        let bytes = Bytes::from_owner(pickle);
        SharedValue { inner: on!(&self.inner, |d| d.share_encoded(bytes)) }
    }

    /// A watch of no task yet, for the `Executor` (see `blitzen::Watch`).
    fn watch(&self) -> Watch {
        Watch { inner: on!(&self.inner, |d| d.watch()) }
    }

    /// Adds the tasks numbered `ids` to `watch`.
    fn watch_more(&self, watch: &Watch, ids: Vec<u64>) {
        on!(&self.inner, |d| {
            let ids: Vec<TaskId> = ids.iter().map(|&seq| d.id_of(seq)).collect();
            d.watch_more(&watch.inner, &ids)
        });
    }

    /// Takes the tasks numbered `ids` out of `watch` (a thread waits for them itself).
    fn unwatch(&self, watch: &Watch, ids: Vec<u64>) {
        on!(&self.inner, |d| {
            let ids: Vec<TaskId> = ids.iter().map(|&seq| d.id_of(seq)).collect();
            d.unwatch(&watch.inner, &ids)
        });
    }

    /// Cancels the tasks numbered `ids` (see `blitzen.MulticoreDispatcher.cancel`).
    fn cancel(&self, ids: Vec<u64>) -> PyResult<()> {
        on!(&self.inner, |d| {
            let ids: Vec<TaskId> = ids.iter().map(|&seq| d.id_of(seq)).collect();
            d.cancel_many(&ids).map_err(dispatch_error)
        })
    }

    /// Cancels every unfinished task; returns how many.
    fn cancel_all(&self) -> usize {
        on!(&self.inner, |d| d.cancel_all())
    }

    /// Tasks submitted and not yet finished.
    fn pending(&self) -> usize {
        on!(&self.inner, |d| d.pending())
    }

    /// Stops the workers or says goodbye to the server; unfinished tasks end cancelled.
    fn shutdown(&self, py: Python<'_>) {
        py.detach(|| on!(&self.inner, |d| d.shutdown()));
    }

    /// The pids of the ready workers once all `target` are up (within `timeout` seconds), or
    /// `None`. Multicore only.
    fn wait_for_workers(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<Vec<u32>>> {
        let timeout = seconds(timeout, "timeout")?;
        match &self.inner {
            Inner::Multicore(d) => Ok(py.detach(|| d.wait_for_workers(timeout))),
            Inner::Cluster(_) => {
                Err(PyRuntimeError::new_err("a cluster's workers are its agents'"))
            }
        }
    }

    /// The worker processes of the agents connected to the server now. Cluster only.
    fn cluster_workers(&self, py: Python<'_>) -> PyResult<usize> {
        let d = self.distributed()?;
        py.detach(|| d.cluster_workers()).map_err(dispatch_error)
    }

    /// Runs a server on this dispatcher's address for `duration` seconds (until Ctrl-C or
    /// SIGTERM when `None`). Cluster only.
    #[pyo3(signature = (duration=None))]
    fn spawn_server(&self, py: Python<'_>, duration: Option<f64>) -> PyResult<()> {
        let duration = duration.map(|d| seconds(d, "duration")).transpose()?;
        let d = self.distributed()?;
        py.detach(|| d.spawn_server(duration)).map_err(dispatch_error)
    }

    /// Runs an agent for this dispatcher's server with `workers` Python worker processes, until
    /// Ctrl-C or SIGTERM (or the server has not been reachable for `give_up_after` seconds, or
    /// it held no task for `idle_timeout` seconds, or `time_limit` seconds passed), offering
    /// `cpus`, `memory` and `resources` (default: one CPU per worker, the machine's memory,
    /// none). `server_file`: where `blitzen-server --address-file` says the server is, instead
    /// of this dispatcher's address. Cluster only.
    #[pyo3(signature = (
        workers, command, env, cpus=None, memory=None, resources=None, give_up_after=None,
        idle_timeout=None, time_limit=None, allocation=None, server_file=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn spawn_client(
        &self,
        py: Python<'_>,
        workers: usize,
        command: Vec<String>,
        env: Vec<(String, String)>,
        cpus: Option<u32>,
        memory: Option<Bound<'_, PyAny>>,
        resources: Option<Vec<(String, u64)>>,
        give_up_after: Option<f64>,
        idle_timeout: Option<f64>,
        time_limit: Option<f64>,
        allocation: Option<String>,
        server_file: Option<std::path::PathBuf>,
    ) -> PyResult<()> {
        let give_up_after = give_up_after.map(|s| seconds(s, "give_up_after")).transpose()?;
        let positive = |s: f64, name: &str| match seconds(s, name)? {
            d if d.is_zero() => Err(PyValueError::new_err(format!("{name} must be more than 0"))),
            d => Ok(d),
        };
        let idle_timeout = idle_timeout.map(|s| positive(s, "idle_timeout")).transpose()?;
        let time_limit = time_limit.map(|s| positive(s, "time_limit")).transpose()?;
        let command = worker_command(command, env)?;
        let d = self.distributed()?;
        let memory = memory.map(|m| size(&m, "memory")).transpose()?;
        let capacity = Capacity::offered(workers, cpus, memory, resources.unwrap_or_default());
        if let Some(capacity) = &capacity {
            capacity.validate().map_err(PyValueError::new_err)?;
        }
        let options = AgentOptions {
            capacity,
            give_up_after,
            idle_timeout,
            time_limit,
            allocation,
            server_file,
        };
        py.detach(|| d.spawn_agent(blitzen::tasks![], workers, command, options))
            .map_err(dispatch_error)
    }
}

/// `d`, streaming what its tasks print into its output reader when `stream`.
fn streamed<B: blitzen::Backend>(
    d: blitzen::Dispatcher<B>,
    stream: bool,
) -> blitzen::Dispatcher<B> {
    if stream { d.with_output(Output::Collect) } else { d }
}

impl Dispatcher {
    fn distributed(&self) -> PyResult<&DistributedDispatcher> {
        match &self.inner {
            Inner::Cluster(d) => Ok(d),
            Inner::Multicore(_) => Err(PyRuntimeError::new_err("not a distributed dispatcher")),
        }
    }
}

/// This machine's address on its default route (`blitzen.utils.get_local_ip()`).
#[pyfunction]
pub(crate) fn local_ip() -> String {
    blitzen::utils::get_local_ip().to_string()
}

fn worker_command(command: Vec<String>, env: Vec<(String, String)>) -> PyResult<WorkerCommand> {
    let mut parts = command.into_iter();
    let program = parts.next().ok_or_else(|| PyValueError::new_err("an empty worker command"))?;
    let mut command = WorkerCommand::new(program);
    command.args.extend(parts.map(Into::into));
    command.env.extend(env.into_iter().map(|(k, v)| (k.into(), v.into())));
    Ok(command)
}

/// What a call asks for, from the keywords of `run`; a clear `ValueError` for what makes no
/// sense, before anything is submitted.
fn needs(
    cpus: Option<i64>,
    memory: Option<Bound<'_, PyAny>>,
    resources: Option<Vec<(String, i64)>>,
) -> PyResult<Needs> {
    let mut needs = Needs::PLAIN;
    if let Some(cpus) = cpus {
        let cpus = u32::try_from(cpus).ok().filter(|&n| n > 0).ok_or_else(|| {
            PyValueError::new_err(format!("cpus must be a positive integer, not {cpus}"))
        })?;
        needs = needs.with_cpus(cpus);
    }
    if let Some(memory) = memory {
        needs = needs.with_memory(size(&memory, "memory")?);
    }
    let resources = resources.unwrap_or_default();
    if resources.len() > MAX_RESOURCES {
        return Err(PyValueError::new_err(format!(
            "a task names at most {MAX_RESOURCES} resources, not {}",
            resources.len()
        )));
    }
    for (name, count) in resources {
        check_name(&name).map_err(PyValueError::new_err)?;
        let count = u64::try_from(count).ok().filter(|&n| n > 0).ok_or_else(|| {
            PyValueError::new_err(format!("resources[{name:?}] must be at least 1, not {count}"))
        })?;
        needs = needs.with_resource(intern(name), count);
    }
    Ok(needs)
}

/// A number of bytes, or a size such as `"4GiB"`.
pub(crate) fn size(value: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    if let Ok(text) = value.extract::<String>() {
        return parse_size(&text)
            .map_err(|e| PyValueError::new_err(format!("{what}={text:?}: {e}")));
    }
    match value.extract::<i64>() {
        Ok(n) if n > 0 => Ok(n as u64),
        _ => Err(PyValueError::new_err(format!(
            "{what} must be a number of bytes > 0 or a size such as \"4GiB\", not {value}"
        ))),
    }
}

/// A label of at most 200 bytes (cut at a character boundary): labels are shown, not parsed.
fn truncated(mut label: String) -> String {
    if label.len() > 200 {
        let mut end = 200;
        while !label.is_char_boundary(end) {
            end -= 1;
        }
        label.truncate(end);
    }
    label
}

/// A resource name or a label that lives as long as the process: there are few (one per
/// function), and options hold `&'static str`s.
fn intern(name: String) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&known) = names.iter().find(|&&known| known == name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.push(leaked);
    leaked
}

fn waited_too_long(limit: Duration, pending: usize, total: usize, detail: Option<String>) -> PyErr {
    let why = detail.map(|d| format!(" ({d})")).unwrap_or_default();
    PyTimeoutError::new_err(format!(
        "waited {limit:?}: {pending} of {total} tasks are still unfinished{why}"
    ))
}

fn dispatch_error(e: DispatchError) -> PyErr {
    match e {
        DispatchError::UnknownTask(_) | DispatchError::AlreadyFetched(_) => {
            PyKeyError::new_err(e.to_string())
        }
        e => PyRuntimeError::new_err(e.to_string()),
    }
}
