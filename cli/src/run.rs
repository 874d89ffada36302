//! Submitting a session's tasks, and collecting their results as they finish, with progress.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use blitzen::distributed::{DistributedDispatcher, LocalCluster, Secret};
use blitzen::{Completion, Fetch, RunOptions, TaskId};

use crate::args::{Cluster, Submit};
use crate::items::{self, Items};
use crate::session::{Ended, Record};

/// How long `submit` waits for the server to take the tasks, and `wait` to reach it.
const PATIENCE: Duration = Duration::from_secs(600);

/// `blitzen submit`.
pub fn submit(args: Submit) -> Result<ExitCode, String> {
    let (program, listed) = items::split_items(&args.program);
    let items = match (&args.array, &args.each_line, &args.each_file, listed) {
        (Some(range), ..) => Items::array(range)?,
        (_, Some(file), ..) => Items::lines(file)?,
        (_, _, Some(pattern), _) => Items::files(pattern)?,
        (_, _, _, Some(values)) if values.is_empty() => {
            return Err("nothing after ::: to run on".into());
        }
        (_, _, _, Some(values)) => Items::listed(values),
        (None, None, None, None) => {
            return Err(
                "no items: give --array A-B, --each-line FILE, --each-file GLOB or ::: ITEMS"
                    .into(),
            );
        }
    };
    if (args.array.is_some() || args.each_line.is_some() || args.each_file.is_some())
        && args.program.iter().any(|w| w == ":::")
    {
        return Err(
            "give the items once: either ::: ITEMS or --array/--each-line/--each-file".into()
        );
    }
    items::check_program(&program)?;
    let options = options(&args)?;
    let cwd = match &args.cwd {
        Some(dir) => Some(dir.to_string_lossy().into_owned()),
        None => std::env::current_dir().ok().map(|d| d.to_string_lossy().into_owned()),
    };
    let specs: Vec<_> = (items.values.iter().zip(&items.numbers))
        .map(|(value, &number)| items::spec_for(&program, value, number, &args.env, cwd.as_deref()))
        .collect();
    let json = args.cluster.json;
    let Some(server) = args.cluster.server.clone() else {
        // This machine's cores, for the run.
        let workers = args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let cluster = LocalCluster::start(workers).map_err(|e| e.to_string())?;
        let mut d = cluster.dispatcher();
        if let Some(name) = &args.session {
            d = d.with_session(name);
        }
        let record = send(&d, cluster.addr(), true, &program, &items, specs, options)?;
        announce(&record, json);
        let code = collect(&d, &record, json);
        d.shutdown();
        cluster.shutdown();
        return code;
    };
    let mut d = dispatcher(&args.cluster, &server)?;
    if let Some(name) = &args.session {
        d = d.with_session(name);
    }
    let record = send(&d, d.server(), false, &program, &items, specs, options)?;
    announce(&record, json);
    if args.wait {
        let code = collect(&d, &record, json);
        d.shutdown();
        return code;
    }
    // A task that ended while this process ran is noted as ended here: the server gives the
    // process that attaches only the results this one did not take.
    d.keep_results_at_the_server();
    note_ended(&d, &record)?;
    d.detach();
    Ok(ExitCode::SUCCESS)
}

/// The options of every task of the submission.
fn options(args: &Submit) -> Result<RunOptions, String> {
    let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
    let mut options =
        RunOptions { timeout: args.timeout, retries: args.retries, ..RunOptions::default() };
    if let Some(cpus) = args.cpus {
        if cpus == 0 {
            return Err("--cpus 0: a task holds at least 1 CPU".into());
        }
        options = options.with_cpus(cpus);
    }
    if let Some(memory) = args.memory {
        options = options.with_memory(memory);
    }
    if let Some(text) = &args.resources {
        let offer = blitzen_protocol::devices::parse_offer(text)
            .map_err(|e| format!("--resources: {e}"))?;
        if let Some((name, _)) = offer.devices.first() {
            return Err(format!(
                "--resources {text}: a task asks for how many of `{name}` it holds (e.g. {name}=1), not \
                 which devices: an agent gives it its own"
            ));
        }
        if offer.counts.len() > blitzen::MAX_RESOURCES {
            return Err(format!(
                "--resources {text}: a task names at most {} resources",
                blitzen::MAX_RESOURCES
            ));
        }
        for (name, count) in offer.counts {
            options = options.with_resource(leak(&name), count);
        }
    }
    if let Some(priority) = args.priority {
        options = options.with_priority(priority);
    }
    if let Some(label) = &args.label {
        options = options.with_label(leak(label));
    }
    Ok(options)
}

/// A dispatcher for `server` with the secret of `cluster`.
pub fn dispatcher(cluster: &Cluster, server: &str) -> Result<DistributedDispatcher, String> {
    let d = DistributedDispatcher::new(server).with_connect_timeout(Duration::from_secs(10));
    match &cluster.secret_file {
        Some(path) => d.with_secret_file(path).map_err(|e| e.to_string()),
        None => Ok(d),
    }
}

/// The secret of `cluster` for an observer's question.
pub fn secret(cluster: &Cluster) -> Result<Option<Secret>, String> {
    Secret::from_file_or_env(cluster.secret_file.as_deref()).map_err(|e| e.to_string())
}

/// Submits one task per item and saves the session's record once the server has them all.
fn send(
    d: &DistributedDispatcher,
    server: &str,
    local: bool,
    program: &[String],
    items: &Items,
    specs: Vec<blitzen::CommandSpec>,
    options: RunOptions,
) -> Result<Record, String> {
    let ids: Vec<TaskId<i32>> =
        specs.into_iter().map(|spec| d.run_with(blitzen::program, spec, options)).collect();
    d.wait_accepted(PATIENCE).map_err(|e| e.to_string())?;
    let record = Record {
        session: d.session().to_string(),
        server: server.to_string(),
        local,
        program: program.to_vec(),
        numbers: items.numbers.clone(),
        values: items.values.clone(),
        ids,
    };
    record.save()?;
    Ok(record)
}

fn announce(record: &Record, json: bool) {
    if json {
        let said = serde_json::json!({ "session": record.session, "tasks": record.ids.len(), "server": record.server });
        println!("{said}");
    } else {
        println!("{}", record.session);
        eprintln!("{} tasks submitted in session {}", record.ids.len(), record.session);
    }
}

/// Collects the results of the session's items not collected yet, as they finish, showing
/// progress on stderr; 1 if any failed.
pub fn collect(d: &DistributedDispatcher, record: &Record, json: bool) -> Result<ExitCode, String> {
    let before = record.ended()?;
    let waiting: Vec<TaskId<i32>> = (record.ids.iter().zip(&record.numbers))
        .filter(|(_, n)| !before.contains_key(n))
        .map(|(id, _)| *id)
        .collect();
    let place_of: std::collections::HashMap<u64, usize> =
        record.ids.iter().enumerate().map(|(i, id)| (id.seq(), i)).collect();
    let total = record.ids.len();
    let mut failed = before.values().filter(|e| e.error.is_some()).count();
    let mut done = before.len();
    let mut progress = Progress::new(json);
    let mut completions = d.completions(&waiting);
    loop {
        let mut finished = Vec::new();
        match completions.next_within(Duration::from_millis(200)) {
            Completion::Finished(seq) => finished.push(seq),
            Completion::Waiting => {}
            Completion::AllDone => {
                progress.show(done, failed, total, true);
                break;
            }
        }
        while let Completion::Finished(seq) = completions.next_within(Duration::ZERO) {
            finished.push(seq);
        }
        if !finished.is_empty() {
            let ended = take_ended(d, record, &place_of, &finished)?;
            failed += ended.iter().filter(|e| e.error.is_some()).count();
            done += ended.len();
        }
        progress.show(done, failed, total, false);
    }
    if json {
        let said = serde_json::json!({ "session": record.session, "tasks": total, "done": done, "failed": failed });
        println!("{said}");
    } else if failed > 0 {
        eprintln!("{failed} of {total} failed: blitzen failures {}", record.session);
    }
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Takes the results of the tasks numbered `finished` (ended in `d`) and adds them to the
/// session's record.
fn take_ended(
    d: &DistributedDispatcher,
    record: &Record,
    place_of: &std::collections::HashMap<u64, usize>,
    finished: &[u64],
) -> Result<Vec<Ended>, String> {
    let places: Vec<usize> = finished.iter().filter_map(|s| place_of.get(s).copied()).collect();
    let ids: Vec<_> = places.iter().map(|&p| record.ids[p].untyped()).collect();
    let results = d.get_task_results(&ids, Fetch::default()).map_err(|e| e.to_string())?;
    let ended: Vec<Ended> = (places.iter().zip(results))
        .map(|(&place, r)| Ended {
            item: record.numbers[place],
            error: r.outcome().err().map(|e| match e {
                // How the program ended, without the task's own name (`program`).
                blitzen::TaskError::Returned { message, .. } => message,
                e => e.to_string(),
            }),
            stdout: r.run.stdout.to_text(),
            stderr: r.run.stderr.to_text(),
            host: r.worker.as_ref().and_then(|w| w.host.clone()),
            seconds: r.run.elapsed().as_secs_f64(),
        })
        .collect();
    record.add(&ended)?;
    Ok(ended)
}

/// Adds to the session's record the tasks that ended in `d` already (with results this process
/// took from the server, which will not give them again).
fn note_ended(d: &DistributedDispatcher, record: &Record) -> Result<(), String> {
    let place_of: std::collections::HashMap<u64, usize> =
        record.ids.iter().enumerate().map(|(i, id)| (id.seq(), i)).collect();
    let mut completions = d.completions(&record.ids);
    let mut finished = Vec::new();
    while let Completion::Finished(seq) = completions.next_within(Duration::ZERO) {
        finished.push(seq);
    }
    if !finished.is_empty() {
        take_ended(d, record, &place_of, &finished)?;
    }
    Ok(())
}

/// The progress line: redrawn in place on a terminal, a line every few seconds otherwise.
struct Progress {
    quiet: bool,
    terminal: bool,
    started: Instant,
    last: Option<Instant>,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        Self {
            quiet,
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
        }
    }

    fn show(&mut self, done: usize, failed: usize, total: usize, last: bool) {
        let every = if self.terminal { Duration::from_millis(200) } else { Duration::from_secs(5) };
        if self.quiet || (!last && self.last.is_some_and(|at| at.elapsed() < every)) {
            return;
        }
        self.last = Some(Instant::now());
        let width = 30;
        let filled = (done * width).checked_div(total).unwrap_or(width);
        let bar = format!("{}{}", "#".repeat(filled), "-".repeat(width - filled));
        let secs = self.started.elapsed().as_secs_f64();
        let line = format!("[{bar}] {done}/{total} done, {failed} failed, {secs:.1}s");
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r{line}{}", if last { "\n" } else { "" })
        } else {
            writeln!(err, "{line}")
        };
    }
}
