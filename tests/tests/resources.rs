//! What tasks ask for and what they get: CPUs, memory (a limit that is enforced and named) and
//! counted resources, on real worker processes.
//!
//! The workers are this test binary re-executed, so `main` calls `blitzen::worker_main()` before
//! handing over to the test harness.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blitzen::distributed::DistributedDispatcher;
use blitzen::{
    Capacity, CommandOutput, CommandSpec, Fetch, MulticoreDispatcher, RunOptions, TaskError,
    TaskId, command,
};
use blitzen_tests::cluster::{Process, driver, start_agent_with, start_program, start_server};
use blitzen_tests::{check, fail, trial};
use libtest_mimic::{Arguments, Failed};

// ----- tasks -----

/// Allocates `mib` MiB, touches every page, and returns how many bytes it held.
#[blitzen::task]
fn hog(mib: usize) -> usize {
    hold(mib)
}

/// [`hog`], limited to 64 MiB by its attribute.
#[blitzen::task(memory = "64MiB")]
fn hog_within(mib: usize) -> usize {
    hold(mib)
}

fn hold(mib: usize) -> usize {
    let mut v = vec![0u8; mib << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&v).len()
}

/// When it ran: microseconds since the epoch at its start and end, after sleeping `ms`.
type Span = (u64, u64);

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn spend(ms: u64) -> Span {
    let start = now_us();
    std::thread::sleep(Duration::from_millis(ms));
    (start, now_us())
}

#[blitzen::task]
fn span(ms: u64) -> Span {
    spend(ms)
}

#[blitzen::task(cpus = 2)]
fn wide_span(ms: u64) -> Span {
    spend(ms)
}

#[blitzen::task(resources(gpu = 1))]
fn gpu_span(ms: u64) -> Span {
    spend(ms)
}

// ----- helpers -----

const WAIT: Duration = Duration::from_secs(60);

fn results<O: serde::de::DeserializeOwned>(
    d: &MulticoreDispatcher,
    ids: &[TaskId<O>],
) -> Result<Vec<Result<O, TaskError>>, Failed> {
    d.get_results_with(ids, Fetch::default().within(WAIT)).map_err(fail)
}

/// The most of each held at once, over spans each holding `(cpus, gpus)`.
fn peaks(spans: &[(Span, u32, u32)]) -> (u32, u32) {
    // Ends sort before starts at the same instant: a task that ended as another started did
    // not run beside it.
    let mut events: Vec<(u64, i64, i64)> = Vec::new();
    for &((start, end), cpus, gpus) in spans {
        events.push((start, i64::from(cpus), i64::from(gpus)));
        events.push((end, -i64::from(cpus), -i64::from(gpus)));
    }
    events.sort_by_key(|&(at, cpus, _)| (at, cpus > 0));
    let (mut cpus, mut gpus, mut most) = (0i64, 0i64, (0i64, 0i64));
    for (_, c, g) in events {
        cpus += c;
        gpus += g;
        most = (most.0.max(cpus), most.1.max(gpus));
    }
    (most.0 as u32, most.1 as u32)
}

// ----- memory -----

/// A task that allocates past its limit ends `MemoryExceeded` naming the limit, its worker is
/// replaced, and the tasks beside it, limited or not, finish with their values.
fn a_task_past_its_memory_limit_ends_memory_exceeded() -> Result<(), Failed> {
    let d = MulticoreDispatcher::new(2).map_err(fail)?;
    let neighbours: Vec<_> = (0..20).map(|_| d.run(span, 10)).collect();
    let limit = RunOptions::default().with_memory(64 << 20);
    let over = d.run_with(hog, 256, limit);
    let within = d.run_with(hog, 16, limit);
    let over_by_attribute = d.run(hog_within, 256);
    let within_by_attribute = d.run(hog_within, 16);
    let unlimited = d.run(hog, 256);
    let ended = results(&d, &[over, within, over_by_attribute, within_by_attribute, unlimited])?;
    for (i, r) in ended.iter().enumerate() {
        let exceeded = i == 0 || i == 2;
        match r {
            Err(e @ TaskError::MemoryExceeded { limit, .. }) if exceeded => {
                check(*limit == 64 << 20, format!("limit {limit}"))?;
                let text = e.to_string();
                check(text.contains("went past its memory limit of 64.0 MiB"), &text)?;
                check(
                    text.contains("memory allocation of"),
                    format!("no allocation line: {text}"),
                )?;
            }
            Ok(n) if !exceeded => {
                let mib = if i == 4 { 256 } else { 16 };
                check(*n == mib << 20, format!("task {i} held {n} bytes"))?;
            }
            other => return Err(format!("task {i} ended {other:?}").into()),
        }
    }
    for r in results(&d, &neighbours)? {
        check(r.is_ok(), format!("a neighbour ended {r:?}"))?;
    }
    let pids = d.wait_for_workers(WAIT).ok_or("the pool did not recover")?;
    check(pids.len() == 2, format!("{} workers", pids.len()))?;
    check(d.status().replacements == 2, format!("{} replacements", d.status().replacements))
}

// ----- CPUs and counted resources -----

/// Tasks asking for two CPUs, for a GPU, and plain ones, all at once: at no moment do the
/// running ones hold more than the dispatcher has, and small ones fill what large ones leave.
fn running_tasks_never_hold_more_than_there_is() -> Result<(), Failed> {
    let d = MulticoreDispatcher::builder()
        .workers(4)
        .cpus(4)
        .resource("gpu", 1)
        .build()
        .map_err(fail)?;
    let (mut wide, mut gpu, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..8 {
        wide.push(d.run(wide_span, 60));
        gpu.push(d.run(gpu_span, 40));
        plain.push(d.run(span, 30));
    }
    let mut spans = Vec::new();
    for (ids, cpus, gpus) in [(&wide, 2, 0), (&gpu, 1, 1), (&plain, 1, 0)] {
        for r in results(&d, ids)? {
            spans.push((r.map_err(fail)?, cpus, gpus));
        }
    }
    let (cpus, gpus) = peaks(&spans);
    check(cpus <= 4 && gpus <= 1, format!("held {cpus} CPUs and {gpus} GPUs at once"))?;
    check(cpus == 4, format!("at most {cpus} of 4 CPUs were ever used at once"))?;
    check(gpus == 1, "the GPU was never used")
}

/// A task asking for every CPU, behind and before streams of plain ones, starts once those
/// before it have, and none of those after it starts before it has finished.
fn a_large_task_is_not_starved_by_small_ones() -> Result<(), Failed> {
    let d = MulticoreDispatcher::builder().workers(2).cpus(2).build().map_err(fail)?;
    // Teach the pool the plain task is short, so it would prefetch it behind running ones.
    results(&d, &(0..20).map(|_| d.run(span, 0)).collect::<Vec<_>>())?;
    let before: Vec<_> = (0..20).map(|_| d.run(span, 5)).collect();
    let big = d.run_with(span, 20, RunOptions::default().with_cpus(2));
    let after: Vec<_> = (0..20).map(|_| d.run(span, 5)).collect();
    let (big_start, big_end) = results(&d, &[big])?.remove(0).map_err(fail)?;
    let ran = |ids: &[TaskId<Span>]| -> Result<Vec<Span>, Failed> {
        results(&d, ids)?.into_iter().map(|r| r.map_err(fail)).collect()
    };
    let before = ran(&before)?;
    let after = ran(&after)?;
    let last_before = before.iter().map(|s| s.0).max().unwrap_or(0);
    let first_after = after.iter().map(|s| s.0).min().unwrap_or(u64::MAX);
    check(last_before <= big_start, "a task submitted before the large one started after it")?;
    check(
        first_after >= big_end,
        format!(
            "a task submitted after the large one started {} µs before it ended",
            big_end.saturating_sub(first_after)
        ),
    )
}

/// What the dispatcher can never give ends the task at once, saying what is missing; a request
/// that makes no sense is refused; a capacity that makes no sense stops the build.
fn what_cannot_be_had_is_an_error_at_once() -> Result<(), Failed> {
    let d = MulticoreDispatcher::builder()
        .workers(2)
        .cpus(2)
        .resource("gpu", 1)
        .build()
        .map_err(fail)?;
    let options = RunOptions::default();
    let ids = [
        d.run_with(span, 0, options.with_cpus(3)),
        d.run_with(span, 0, options.with_resource("tpu", 1)),
        d.run_with(span, 0, options.with_memory(u64::MAX)),
        d.run_with(span, 0, options.with_cpus(0)),
        d.run_with(span, 0, options.with_resource("gpu", 0)),
        d.run_with(span, 0, options.with_resource("g p u", 1)),
    ];
    let ended = d.get_results_with(&ids, Fetch::default().within(Duration::from_secs(5)));
    let ended = ended.map_err(fail)?;
    let expect = [
        "unrunnable: it asks for 3 CPUs of 2",
        "unrunnable: it asks for tpu=1 of 0",
        "PiB memory of",
        "refused: it asks for what cannot be: a task needs at least 1 CPU",
        "refused: it asks for what cannot be: a request of 0 `gpu`",
        "refused: it asks for what cannot be: `g p u` is not a resource name",
    ];
    for (r, want) in ended.iter().zip(expect) {
        let text = match r {
            Err(e @ (TaskError::Unrunnable { .. } | TaskError::Refused { .. })) => e.to_string(),
            other => return Err(format!("expected `{want}`, got {other:?}").into()),
        };
        check(text.contains(want), format!("`{text}` does not say `{want}`"))?;
    }
    check(
        ended[0].as_ref().is_err_and(|e| e.to_string().contains("this pool has (2 CPUs")),
        "the pool's capacity is named",
    )?;
    match MulticoreDispatcher::builder().workers(1).cpus(0).build() {
        Err(e) => check(e.to_string().contains("0 CPUs"), format!("{e}")),
        Ok(_) => Err("a dispatcher with 0 CPUs started".into()),
    }
}

// ----- on a cluster -----

/// Started with it set to a server's address, this binary is an agent with two workers and a
/// GPU, whose workers know the tasks above.
const AGENT_ENV: &str = "BLITZEN_TEST_RESOURCES_AGENT";

/// `sh` printing the time (in nanoseconds) at its start and at its end, `secs` apart.
fn timed(secs: f64) -> CommandSpec {
    CommandSpec::new("sh").arg("-c").arg(format!("date +%s%N; sleep {secs}; date +%s%N"))
}

/// The span a [`timed`] command printed, in microseconds.
fn span_of(out: &CommandOutput) -> Result<Span, Failed> {
    let text = String::from_utf8_lossy(&out.stdout);
    let times: Vec<u64> = text.lines().filter_map(|l| l.trim().parse::<u64>().ok()).collect();
    match times[..] {
        [start, end] => Ok((start / 1000, end / 1000)),
        _ => Err(format!("not two times: {text:?}").into()),
    }
}

/// `sh` printing the devices it was given (`devices=CUDA gpu=… fpga=…`), then the time at its
/// start and at its end, `secs` apart.
fn timed_on_devices(secs: f64) -> CommandSpec {
    let said =
        "echo devices=$CUDA_VISIBLE_DEVICES gpu=$BLITZEN_RESOURCE_GPU fpga=$BLITZEN_RESOURCE_FPGA";
    CommandSpec::new("sh").arg("-c").arg(format!("{said}; date +%s%N; sleep {secs}; date +%s%N"))
}

/// Checks what tasks holding one device of `resource` were given: one device each, the same in
/// their environment as in their `WorkerInfo`, among `devices`, and never one two running tasks
/// of a host shared.
fn each_had_its_own(
    results: &[blitzen::TaskResult],
    resource: &str,
    devices: &[u32],
) -> Result<(), Failed> {
    let mut spans: std::collections::HashMap<(String, u32), Vec<Span>> = Default::default();
    for r in results {
        let out: CommandOutput = r.decode().map_err(fail)?;
        check(out.success(), format!("a command failed: {out:?}"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let said = |key: &str| {
            let word = text.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='));
            word.unwrap_or_default().to_string()
        };
        let worker = r.worker.as_ref().ok_or("no worker")?;
        let given: Vec<_> = worker.devices.iter().filter(|(n, _)| n == resource).collect();
        let [(_, indices)] = given[..] else {
            return Err(format!("{resource}: given {:?}", worker.devices).into());
        };
        let [index] = indices[..] else { return Err(format!("{resource}: {indices:?}").into()) };
        check(devices.contains(&index), format!("{resource} {index} is not one of {devices:?}"))?;
        check(said(resource) == index.to_string(), format!("{resource}={index}: {text:?}"))?;
        if resource == "gpu" {
            check(said("devices") == index.to_string(), format!("CUDA_VISIBLE_DEVICES: {text:?}"))?;
        }
        let host = worker.host.clone().unwrap_or_default();
        spans.entry((host, index)).or_default().push(span_of(&out)?);
    }
    for ((host, index), mut held) in spans {
        held.sort();
        for pair in held.windows(2) {
            check(
                pair[1].0 >= pair[0].1,
                format!("{host}: two tasks held {resource} {index} at once: {pair:?}"),
            )?;
        }
    }
    Ok(())
}

/// Devices of counted resources: on one machine (GPUs 2 and 5 named by index) and on two stock
/// agents offering `gpu=2` (devices 0 and 1) and one an indexed resource of another name
/// (`fpga=5,7`), each task holding one is given its own — in `CUDA_VISIBLE_DEVICES`,
/// `BLITZEN_RESOURCE_<NAME>` and its `WorkerInfo` — and no two running tasks share one.
fn each_task_is_given_a_device_of_its_own() -> Result<(), Failed> {
    let d =
        MulticoreDispatcher::builder().workers(3).devices("gpu", [5, 2]).build().map_err(fail)?;
    let gpu = RunOptions::default().with_resource("gpu", 1);
    let ids: Vec<_> =
        (0..6).map(|_| d.run_with(command, timed_on_devices(0.2), gpu).untyped()).collect();
    let results = d.get_task_results(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    each_had_its_own(&results, "gpu", &[2, 5])?;
    d.shutdown();
    let server = start_server(&[]).map_err(fail)?;
    let a = start_agent_with(&server.addr, 3, "a", &["--resources", "gpu=2"]).map_err(fail)?;
    let b =
        start_agent_with(&server.addr, 3, "b", &["--resources", "gpu=2,fpga=5,7"]).map_err(fail)?;
    connected(&a)?;
    connected(&b)?;
    let d = driver(&server.addr);
    let gpus: Vec<_> =
        (0..8).map(|_| d.run_with(command, timed_on_devices(0.3), gpu).untyped()).collect();
    let fpga = RunOptions::default().with_resource("fpga", 1);
    let fpgas: Vec<_> =
        (0..4).map(|_| d.run_with(command, timed_on_devices(0.2), fpga).untyped()).collect();
    let gpus = d.get_task_results(&gpus, Fetch::default().within(WAIT)).map_err(fail)?;
    let fpgas = d.get_task_results(&fpgas, Fetch::default().within(WAIT)).map_err(fail)?;
    each_had_its_own(&gpus, "gpu", &[0, 1])?;
    each_had_its_own(&fpgas, "fpga", &[5, 7])?;
    let hosts: std::collections::HashSet<_> =
        gpus.iter().filter_map(|r| r.worker.as_ref()?.host.clone()).collect();
    check(hosts.len() == 2, format!("the GPU tasks ran on {hosts:?}"))
}

fn connected(agent: &Process) -> Result<(), Failed> {
    check(agent.wait_for_log("connected", 1, WAIT), format!("no connection:\n{}", agent.log_text()))
}

/// Two stock agents offering different resources (`--cpus`, `--memory`, `--resources`): each
/// task runs only on an agent that has what it asks for, at no moment do an agent's running
/// tasks hold more than it offers, and a task no agent could ever fit ends `Unrunnable` naming
/// the largest.
fn tasks_run_only_where_they_fit_and_never_past_what_an_agent_offers() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let big = start_agent_with(&server.addr, 4, "big", &["--cpus", "4", "--resources", "gpu=1"])
        .map_err(fail)?;
    let small = start_agent_with(&server.addr, 2, "small", &["--memory", "1GiB"]).map_err(fail)?;
    connected(&big)?;
    connected(&small)?;
    let d = driver(&server.addr);
    let options = RunOptions::default();
    // (options, CPUs, GPUs, whether only `big` has what it asks for)
    let kinds = [
        (options.with_resource("gpu", 1), 1, 1, true),
        (options.with_memory(2 << 30), 1, 0, true),
        (options.with_cpus(2), 2, 0, false),
        (options, 1, 0, false),
    ];
    let mut submitted = Vec::new();
    for round in 0..6 {
        for (i, &(options, cpus, gpus, big_only)) in kinds.iter().enumerate() {
            let secs = 0.1 + 0.05 * ((round + i) % 3) as f64;
            submitted.push((d.run_with(command, timed(secs), options), cpus, gpus, big_only));
        }
    }
    let never = d.run_with(
        command,
        timed(0.0),
        options.with_cpus(8).with_unrunnable_limit(Duration::from_secs(2)),
    );
    let ids: Vec<_> = submitted.iter().map(|(id, ..)| *id).collect();
    let results = d.get_task_results(&ids, Fetch::default().within(WAIT)).map_err(fail)?;
    let mut per_host: std::collections::HashMap<String, Vec<(Span, u32, u32)>> = Default::default();
    for (r, &(_, cpus, gpus, big_only)) in results.iter().zip(&submitted) {
        let host = r.worker.as_ref().and_then(|w| w.host.clone()).unwrap_or_default();
        let out: CommandOutput = r.decode().map_err(fail)?;
        check(out.success(), format!("a command failed: {out:?}"))?;
        check(
            !big_only || host == "big",
            format!("a task asking for {cpus} CPUs, {gpus} GPUs ran on {host}"),
        )?;
        per_host.entry(host).or_default().push((span_of(&out)?, cpus, gpus));
    }
    for (host, spans) in &per_host {
        let (cpus, gpus) = peaks(spans);
        let (most_cpus, most_gpus) = if host == "big" { (4, 1) } else { (2, 0) };
        check(
            cpus <= most_cpus && gpus <= most_gpus,
            format!("{host} ran tasks holding {cpus} CPUs and {gpus} GPUs at once"),
        )?;
    }
    check(per_host.len() == 2, format!("the tasks ran on {:?} only", per_host.keys()))?;
    match d.get_results_with(&[never], Fetch::default().within(WAIT)).map_err(fail)?.remove(0) {
        Err(e @ TaskError::Unrunnable { .. }) => {
            let text = e.to_string();
            check(text.contains("it asks for 8 CPUs of 4 on the largest, big"), &text)
        }
        other => Err(format!("the 8-CPU task ended {other:?}").into()),
    }
}

/// On a cluster, a task past its memory limit ends `MemoryExceeded` on its agent, which
/// replaces the worker, and the tasks beside it finish.
fn a_task_past_its_memory_limit_on_an_agent_ends_memory_exceeded() -> Result<(), Failed> {
    let server = start_server(&[]).map_err(fail)?;
    let mut program = std::process::Command::new(std::env::current_exe().map_err(fail)?);
    program.env(AGENT_ENV, &server.addr);
    let agent = start_program(program, "own-agent").map_err(fail)?;
    connected(&agent)?;
    let d = driver(&server.addr);
    let neighbours: Vec<_> = (0..10).map(|_| d.run(span, 20)).collect();
    let over = d.run(hog_within, 256);
    let within = d.run(hog_within, 16);
    let gpu = d.run(gpu_span, 10);
    let ended = d.get_results_with(&[over, within], Fetch::default().within(WAIT)).map_err(fail)?;
    match &ended[0] {
        Err(e @ TaskError::MemoryExceeded { limit, .. }) => {
            check(*limit == 64 << 20, format!("limit {limit}"))?;
            let host = e.context().worker.as_ref().and_then(|w| w.host.clone());
            check(host.is_some_and(|h| !h.is_empty()), format!("no host in {e}"))?;
        }
        other => return Err(format!("the hog ended {other:?}").into()),
    }
    check(ended[1] == Ok(16 << 20), format!("within its limit: {:?}", ended[1]))?;
    check(results_of(&d, &[gpu])?[0].is_ok(), "the GPU task")?;
    for r in results_of(&d, &neighbours)? {
        check(r.is_ok(), format!("a neighbour ended {r:?}"))?;
    }
    Ok(())
}

fn results_of<O: serde::de::DeserializeOwned>(
    d: &DistributedDispatcher,
    ids: &[TaskId<O>],
) -> Result<Vec<Result<O, TaskError>>, Failed> {
    d.get_results_with(ids, Fetch::default().within(WAIT)).map_err(fail)
}

fn main() -> std::process::ExitCode {
    blitzen::worker_main();
    if let Ok(server) = std::env::var(AGENT_ENV) {
        let capacity = Capacity::of_machine(2).with_resource("gpu", 1);
        let d = DistributedDispatcher::new(server);
        return match d.spawn_client_offering(blitzen::tasks![], 2, capacity) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agent: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let args = Arguments::from_args();
    let tests = vec![
        trial!(tasks_run_only_where_they_fit_and_never_past_what_an_agent_offers),
        trial!(a_task_past_its_memory_limit_on_an_agent_ends_memory_exceeded),
        trial!(a_task_past_its_memory_limit_ends_memory_exceeded),
        trial!(running_tasks_never_hold_more_than_there_is),
        trial!(a_large_task_is_not_starved_by_small_ones),
        trial!(what_cannot_be_had_is_an_error_at_once),
        trial!(each_task_is_given_a_device_of_its_own),
    ];
    libtest_mimic::run(&args, tests).exit_code()
}
