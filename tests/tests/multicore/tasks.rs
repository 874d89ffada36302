//! The tasks these tests run, and the helpers they share.

use crate::prelude::*;

#[blitzen::task]
pub(crate) fn identity(x: u64) -> u64 {
    x
}

#[blitzen::task]
pub(crate) fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[blitzen::task]
pub(crate) fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[blitzen::task]
pub(crate) fn explode(message: String) -> u64 {
    eprintln!("about to panic");
    panic!("{message}")
}

/// `x`, or the end of its worker when `x` is `u64::MAX`: a task whose run times say "tiny"
/// right up to the crash, so the pool streams it behind others.
#[blitzen::task]
pub(crate) fn identity_or_exit(x: u64) -> u64 {
    if x == u64::MAX {
        std::process::exit(3)
    }
    x
}

#[blitzen::task]
pub(crate) fn refuse(message: String) -> Result<u64, String> {
    Err(message)
}

/// Aborts its worker on each of the first `crashes` runs (counted in the file at `tally`),
/// then returns the number of the run that succeeded.
#[blitzen::task]
pub(crate) fn crash_at_first(tally: String, crashes: usize) -> usize {
    use std::io::Write;
    let runs = std::fs::read_to_string(&tally).map(|t| t.len()).unwrap_or(0) + 1;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&tally).expect("tally");
    f.write_all(b"x").expect("tally written");
    if runs <= crashes {
        std::process::abort();
    }
    runs
}

#[blitzen::task]
pub(crate) fn abort_now() {
    eprintln!("about to abort");
    std::process::abort()
}

#[blitzen::task]
pub(crate) fn exit_with(code: i32) {
    eprintln!("exiting with {code}");
    std::process::exit(code)
}

#[blitzen::task]
pub(crate) fn segfault() {
    eprintln!("about to dereference null");
    // SAFETY: none — this task exists to crash its worker with a real segmentation fault.
    #[allow(unsafe_code)]
    unsafe {
        std::ptr::null_mut::<u8>().write_volatile(1);
    }
}

/// Reports its worker's pid, then sleeps.
#[blitzen::task]
pub(crate) fn report_and_sleep(address: String, seconds: u64) -> Result<(), String> {
    report(&address, &[std::process::id()]).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(seconds));
    Ok(())
}

/// Starts a child process, reports its worker's pid and the child's, then sleeps.
#[blitzen::task]
pub(crate) fn spawn_child_and_hang(address: String) -> Result<(), String> {
    let child =
        std::process::Command::new("sleep").arg("1000").spawn().map_err(|e| e.to_string())?;
    report(&address, &[std::process::id(), child.id()]).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(1000));
    Ok(())
}

/// Appends `step` and a newline to the file at `tally`, then, by `mode`: 0 returns at once;
/// 1 naps 300 ms; 2 waits 20 ms (past the worker's batching of the results before it), reports
/// its worker's pid to `address` and sleeps until killed.
#[blitzen::task]
pub(crate) fn tally_step(
    tally: String,
    step: u64,
    mode: u8,
    address: String,
) -> Result<u64, String> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&tally);
    let file = file.as_mut().map_err(|e| e.to_string())?;
    file.write_all(format!("{step}\n").as_bytes()).map_err(|e| e.to_string())?;
    match mode {
        1 => std::thread::sleep(Duration::from_millis(300)),
        2 => {
            std::thread::sleep(Duration::from_millis(20));
            report(&address, &[std::process::id()]).map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_secs(60));
        }
        _ => {}
    }
    Ok(step)
}

/// Prints `bytes` bytes of numbered lines to stdout, then returns a value.
#[blitzen::task]
pub(crate) fn chatter(bytes: usize) -> u64 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let mut written = 0;
    let mut line = 0u64;
    while written < bytes {
        let text = format!("line {line:09}\n");
        let _ = out.write_all(text.as_bytes());
        written += text.len();
        line += 1;
    }
    line
}

/// Reverses a byte buffer.
#[blitzen::task]
pub(crate) fn reverse(data: ByteBuf) -> ByteBuf {
    let mut v = data.into_vec();
    v.reverse();
    ByteBuf::from(v)
}

/// Reverses a blob.
#[blitzen::task]
pub(crate) fn reverse_blob(data: blitzen::Blob) -> blitzen::Blob {
    let mut v: Vec<u8> = data.into();
    v.reverse();
    blitzen::Blob::from(v)
}

/// A handle to a task no worker has.
#[derive(Clone, Copy)]
pub(crate) struct Missing;
impl Task for Missing {
    type Args = ();
    type Output = ();
    const NAME: &'static str = "no_such_task";
    const SIGNATURE: &'static str = "fn no_such_task() -> ()";
    const FINGERPRINT: u64 = 1;
}

/// A handle to `identity` as another build would see it.
#[derive(Clone, Copy)]
pub(crate) struct IdentityV2;
impl Task for IdentityV2 {
    type Args = String;
    type Output = String;
    const NAME: &'static str = "identity";
    const SIGNATURE: &'static str = "fn identity(String) -> String";
    const FINGERPRINT: u64 = blitzen::__private::fingerprint("fn identity(String) -> String");
}

// ----- helpers -----

pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn dispatcher(workers: usize) -> Result<MulticoreDispatcher, Failed> {
    MulticoreDispatcher::new(workers).map_err(|e| Failed::from(format!("cannot start: {e}")))
}

pub(crate) fn one<O: serde::de::DeserializeOwned>(
    d: &MulticoreDispatcher,
    id: blitzen::TaskId<O>,
) -> Result<Result<O, TaskError>, Failed> {
    let mut r = d.get_results_with(&[id], Fetch::default().within(WAIT)).map_err(fail)?;
    r.pop().ok_or_else(|| Failed::from("no result"))
}

/// Waits until the pool is back to `n` ready workers, none of them `dead`.
pub(crate) fn back_to_full_strength(
    d: &MulticoreDispatcher,
    n: usize,
    dead: u32,
) -> Result<(), Failed> {
    let pids = d.wait_for_workers(WAIT).ok_or("the pool did not recover")?;
    check(pids.len() == n, format!("{} workers instead of {n}", pids.len()))?;
    check(!pids.contains(&dead), format!("dead worker {dead} still listed"))?;
    check(pids.iter().all(|&p| is_alive(p)), format!("a listed worker is not alive: {pids:?}"))
}

/// How many times `load_model` ran in this process, and what it loaded.
static LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static MODEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A worker's start task: loads "the model" once per worker process.
#[blitzen::task]
pub(crate) fn load_model() {
    LOADS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let _ = MODEL.set(format!("model of {}", std::process::id()));
    println!("loading the model");
}

/// What this worker's start task left: its pid, the model, how many times it loaded it.
#[blitzen::task]
pub(crate) fn model_here() -> (u32, Option<String>, u64) {
    (std::process::id(), MODEL.get().cloned(), LOADS.load(std::sync::atomic::Ordering::SeqCst))
}

/// A start task that fails.
#[blitzen::task]
pub(crate) fn missing_model() -> Result<(), String> {
    Err("no model file at /models/m.bin".into())
}

/// A start task that panics.
#[blitzen::task]
pub(crate) fn corrupt_model() {
    panic!("the model file is corrupt")
}
