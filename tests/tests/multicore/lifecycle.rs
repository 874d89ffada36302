//! Starting and stopping: shutdown, drop, a killed dispatcher, a forgotten worker_main.

use crate::prelude::*;

pub(crate) fn shutdown_leaves_no_worker_alive() -> Result<(), Failed> {
    let d = dispatcher(3)?;
    let pids = d.wait_for_workers(WAIT).ok_or("not ready")?;
    let running = d.run(nap_ms, 60_000);
    let reports = Reports::new().map_err(fail)?;
    let _hanging = d.run(spawn_child_and_hang, reports.address());
    let child = reports.receive(WAIT).map_err(fail)?[1];
    d.shutdown();
    d.shutdown();
    for pid in pids {
        check(!is_alive(pid), format!("worker {pid} outlived shutdown"))?;
    }
    check(matches!(one(&d, running)?, Err(TaskError::Cancelled { .. })), "running task cancelled")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_alive(child) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    check(!is_alive(child), "a task's child outlived shutdown")
}

pub(crate) fn drop_stops_the_workers() -> Result<(), Failed> {
    let pids = {
        let d = dispatcher(2)?;
        let _ = d.run(nap_ms, 60_000);
        d.wait_for_workers(WAIT).ok_or("not ready")?
    };
    for pid in pids {
        check(!is_alive(pid), format!("worker {pid} outlived the dispatcher"))?;
    }
    Ok(())
}

pub(crate) fn killed_dispatcher_process_leaves_no_orphans() -> Result<(), Failed> {
    use std::io::BufRead;
    let reports = Reports::new().map_err(fail)?;
    let mut program = std::process::Command::new(env!("CARGO_BIN_EXE_blitzen-orphan"))
        .arg(reports.address())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(fail)?;
    // Whatever happens below, the program must not outlive the test.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = program.stdout.take().ok_or("no stdout")?;
    let mut program = Reap(program);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).map_err(fail)?;
    let mut pids: Vec<u32> = line.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    check(pids.len() == 2, format!("worker pids: {line:?}"))?;
    let task = reports.receive(WAIT).map_err(fail)?;
    pids.push(task[1]);
    check(pids.iter().all(|&p| is_alive(p)), "all alive before the kill")?;
    program.0.kill().map_err(fail)?;
    program.0.wait().map_err(fail)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| is_alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survivors: Vec<u32> = pids.into_iter().filter(|&p| is_alive(p)).collect();
    survivors.iter().for_each(|&p| kill(p));
    check(survivors.is_empty(), format!("orphans left behind: {survivors:?}"))
}

pub(crate) fn forgetting_worker_main_is_a_clear_error() -> Result<(), Failed> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blitzen-forgetful"))
        .output()
        .map_err(fail)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(out.status.code() == Some(1), format!("status {:?}, stderr {stderr}", out.status))?;
    // What `main` printed for the error it returned: the sentence with the hint, not a
    // `Debug` dump of nested variants.
    check(stderr.starts_with("Error: worker process "), format!("stderr: {stderr}"))?;
    check(
        stderr.contains("does main() call blitzen::worker_main() first thing?"),
        format!("stderr: {stderr}"),
    )?;
    check(!stderr.contains("WorkerExited") && !stderr.contains("Pool("), format!("{stderr}"))
}

/// A start task runs once in each worker before its first task, and again in a replacement;
/// one that fails is the builder's error, with its message.
pub(crate) fn a_start_task_sets_up_each_worker_once() -> Result<(), Failed> {
    let start = |workers| {
        MulticoreDispatcher::builder().workers(workers).on_worker_start(load_model).build()
    };
    let d = start(2).map_err(fail)?;
    let pids = d.wait_for_workers(WAIT).ok_or("not ready")?;
    let ids: Vec<_> = (0..40).map(|_| d.run(model_here, ())).collect();
    for result in d.get_results_with(&ids, Fetch::default().within(WAIT)).map_err(fail)? {
        let (pid, model, loads) = result.map_err(|e| fail(e.to_string()))?;
        check(model == Some(format!("model of {pid}")), format!("{pid}: {model:?}"))?;
        check(loads == 1, format!("loaded {loads} times in {pid}"))?;
        check(pids.contains(&pid), format!("{pid} is not a worker of {pids:?}"))?;
    }
    d.shutdown();

    // One worker: what the start task printed is not its first task's output; its replacement
    // loads the model again.
    let d = start(1).map_err(fail)?;
    let first =
        d.get_task_results(&[d.run(model_here, ()).untyped()], Fetch::default().within(WAIT));
    let first = first.map_err(fail)?.pop().ok_or("no result")?;
    check(first.is_ok(), format!("{first:?}"))?;
    check(!first.run.stdout.to_text().contains("loading"), "start output kept apart")?;
    let reports = Reports::new().map_err(fail)?;
    let killed = d.run(report_and_sleep, (reports.address(), 60));
    let pid = reports.receive(WAIT).map_err(fail)?[0];
    kill(pid);
    check(matches!(one(&d, killed)?, Err(TaskError::WorkerCrashed { .. })), "killed")?;
    let (replacement, model, loads) = one(&d, d.run(model_here, ()))?.map_err(fail)?;
    check(replacement != pid, "a replacement ran it")?;
    check(model == Some(format!("model of {replacement}")), format!("{model:?}"))?;
    check(loads == 1, format!("loaded {loads} times"))?;
    d.shutdown();

    for (builder, expect) in [
        (MulticoreDispatcher::builder().on_worker_start(missing_model), "no model file at"),
        (
            MulticoreDispatcher::builder().on_worker_start(corrupt_model),
            "the model file is corrupt",
        ),
    ] {
        match builder.workers(1).build() {
            Ok(_) => return Err("a failing start task was accepted".into()),
            Err(e) => {
                let text = e.to_string();
                check(text.contains(expect) && !text.contains("worker_main"), text)?;
            }
        }
    }
    Ok(())
}
