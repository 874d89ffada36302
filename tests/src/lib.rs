//! Helpers for Blitzen's end-to-end tests, which run against real processes.
//!
//! - this file: processes (alive? memory?), signals, and [`Reports`], a rendezvous where a task
//!   running in a worker tells the test something.
//! - [`cluster`]: starting the real `blitzen-server` and `blitzen-client` binaries, temporary
//!   files, a patient driver.
//! - [`browser`]: headless Chromium over WebDriver, for the dashboard.
//! - [`proxy`]: a TCP proxy that throttles, freezes, cuts, records or tampers with a link.
//! - [`netns`]: hosts in network namespaces of a test's own, and [`wire`], the user-space cable
//!   between them (latency, jitter, loss).
//! - [`slurm`]: a one-host Slurm cluster of a test's own (munge, slurmctld, slurmd).
//! - [`hostile_bytes`]: what a stranger may send a server instead of a handshake.
//! - [`tally`]: how many times each task ran, and this program as an agent that runs it.

pub mod browser;
pub mod cluster;
pub mod netns;
pub mod proxy;
pub mod slurm;
pub mod tally;
pub mod wire;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

/// A `libtest_mimic` trial named after its test function.
#[macro_export]
macro_rules! trial {
    ($f:ident) => {
        libtest_mimic::Trial::test(stringify!($f), $f)
    };
}

/// Byte strings that are no Blitzen handshake at all, each named: garbage, random bytes, a
/// length prefix past any limit, a frame larger than a handshake may be. A server must close
/// each connection without answering and keep serving the others.
pub fn hostile_bytes() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: blitzen\r\n\r\n".to_vec()),
        (
            "random bytes",
            (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(),
        ),
        ("length past the limit", vec![0xff, 0xff, 0xff, 0xff, 0x80]),
        ("handshake frame too large", [&(1u32 << 20).to_be_bytes()[..], &[0u8; 64]].concat()),
    ]
}

/// Whether a process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A test failure from any error.
pub fn fail(e: impl std::fmt::Display) -> libtest_mimic::Failed {
    libtest_mimic::Failed::from(e.to_string())
}

/// Fails with `what` unless `cond` holds.
pub fn check(cond: bool, what: impl std::fmt::Display) -> Result<(), libtest_mimic::Failed> {
    if cond { Ok(()) } else { Err(fail(what)) }
}

/// Sends SIGKILL to one process.
pub fn kill(pid: u32) {
    signal(pid, rustix::process::Signal::KILL);
}

/// Sends a signal to one process.
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Sends `bytes` on a fresh connection to `addr` (then shuts down writing, when `close_write`)
/// and returns what the server answered before it closed the connection. A server that closes
/// (EOF) or resets it has refused; one that is still silent after 20 s has not, and that is an
/// error here, never an empty answer.
pub fn poke(addr: &str, bytes: &[u8], close_write: bool) -> std::io::Result<Vec<u8>> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    // The server may close before it has read everything (a length past the limit): writing
    // or shutting down then fails, and what counts is what it answered.
    let _ = s.write_all(bytes);
    if close_write {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    read_until_closed(&mut s)
}

/// Reads until the peer closes (EOF) or resets the connection; a read timeout or any other
/// error is returned, with what came before it.
pub fn read_until_closed(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) => Ok(answer),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(answer),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("the connection was not closed ({e}) after {} bytes", answer.len()),
        )),
    }
}

/// The sum of the numbers `KEY=N` on the lines of `log` that contain `line_has`, e.g. the results
/// a server owed drivers when they reconnected: `log_sum(log, "driver reconnected", "owed")`.
pub fn log_sum(log: &str, line_has: &str, key: &str) -> u64 {
    let key = format!("{key}=");
    (log.lines().filter(|l| l.contains(line_has)))
        .filter_map(|l| {
            let (_, rest) = l.split_once(key.as_str())?;
            rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok()
        })
        .sum()
}

/// How many of `peers` (the local addresses of this process's TCP connections to process
/// `pid`) that process holds a descriptor for: its end of each connection is found in
/// `/proc/net/tcp` (the socket bound to the peer's address as its remote end) and matched to
/// its descriptors by inode. Unlike a count of all its descriptors, other connections coming
/// and going meanwhile do not change it.
pub fn held_connections(pid: u32, peers: &[std::net::SocketAddr]) -> std::io::Result<usize> {
    use std::collections::HashSet;
    let wanted: HashSet<String> = peers
        .iter()
        .filter_map(|a| match a {
            std::net::SocketAddr::V4(v4) => {
                let ip = u32::from_le_bytes(v4.ip().octets());
                Some(format!("{ip:08X}:{:04X}", v4.port()))
            }
            std::net::SocketAddr::V6(_) => None,
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    let inodes: HashSet<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (remote, inode) = (fields.get(2)?, fields.get(9)?);
            wanted.contains(*remote).then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let mut held = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else { continue };
        if inodes.contains(target.to_string_lossy().as_ref()) {
            held += 1;
        }
    }
    Ok(held)
}

/// Resident memory of a process in bytes, from `/proc`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kb| kb * 1024)
}

/// A rendezvous where a task running in a worker reports numbers (pids) to the test, so the test
/// waits for a notification instead of polling.
#[derive(Debug)]
pub struct Reports {
    listener: UnixListener,
    path: PathBuf,
}

impl Reports {
    /// A new rendezvous under the temporary directory.
    pub fn new() -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "blitzen-test-{}-{}.sock",
            std::process::id(),
            fastrand_name()
        ));
        let listener = UnixListener::bind(&path)?;
        Ok(Self { listener, path })
    }

    /// The address to hand to the task.
    pub fn address(&self) -> String {
        self.path.display().to_string()
    }

    /// Waits (at most `timeout`) for one report and returns its numbers.
    pub fn receive(&self, timeout: Duration) -> std::io::Result<Vec<u32>> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let limit = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.listener, PollFlags::IN)];
        if poll(&mut fds, Some(&limit))? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no report within {timeout:?}"),
            ));
        }
        let (mut stream, _) = self.listener.accept()?;
        stream.set_read_timeout(Some(timeout))?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        text.split_whitespace()
            .map(|n| n.parse().map_err(|e| std::io::Error::other(format!("bad report {n:?}: {e}"))))
            .collect()
    }
}

impl Drop for Reports {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Called inside a task: sends numbers to the test's [`Reports`].
pub fn report(address: &str, numbers: &[u32]) -> std::io::Result<()> {
    let mut stream = UnixStream::connect(address)?;
    let text: Vec<String> = numbers.iter().map(u32::to_string).collect();
    stream.write_all(text.join(" ").as_bytes())
}

fn fastrand_name() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (NEXT.fetch_add(1, Ordering::Relaxed) << 32) | nanos
}
