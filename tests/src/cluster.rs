//! Starting the real `blitzen-server` and `blitzen-client` binaries for end-to-end tests.
//!
//! The binaries are the ones `cargo test --workspace` builds for the server's and the client's
//! own tests, found beside the test executable. Every process is killed and reaped when its
//! guard is dropped, so a failing test leaves nothing running.

use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The path of a workspace binary built beside the running test.
pub fn binary(name: &str) -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| io::Error::other("no target dir"))?;
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(io::Error::other(format!(
            "{} is missing: run the suite with `cargo test --workspace`, which builds it",
            path.display()
        )))
    }
}

/// A `cargo` command for a build from inside a test. What cargo set for the test process is
/// left out: it would change the build scripts' inputs and rebuild their crates, here and again
/// in the next build from a shell.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let ours =
            name.starts_with("CARGO_") && !matches!(&*name, "CARGO_HOME" | "CARGO_TARGET_DIR");
        if ours || name == "LD_LIBRARY_PATH" || name == "OUT_DIR" {
            command.env_remove(&*name);
        }
    }
    command
}

/// Builds the binary `name` of the workspace package `package` with the release profile, into
/// the target directory of the running test, and returns its path. Compiling is slow the first
/// time (every dependency of the package is built again with optimisations); later runs find it
/// up to date.
pub fn build_release(package: &str, name: &str) -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = (exe.ancestors().nth(3)).ok_or_else(|| io::Error::other("no target dir"))?;
    let output = cargo()
        .args(["build", "--quiet", "--release", "--package", package, "--bin", name])
        .arg("--target-dir")
        .arg(target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "cargo build --release --bin {name} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(target.join("release").join(name))
}

/// A child process that is stopped when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Where its stderr goes, for diagnostics.
    log: PathBuf,
    /// Kept open so the process never writes into a closed pipe.
    _stdout: Option<ChildStdout>,
}

impl Process {
    fn spawn(mut command: Command, label: &str) -> io::Result<(Self, Option<ChildStdout>)> {
        let log = std::env::temp_dir().join(format!(
            "blitzen-test-{}-{label}-{}.log",
            std::process::id(),
            unique()
        ));
        let file = std::fs::File::create(&log)?;
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(file).spawn()?;
        let stdout = child.stdout.take();
        Ok((Self { child, log, _stdout: None }, stdout))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until at least `count` lines of its log contain `text`, for at most `limit`; the
    /// log is another process's file, so it is read again every 50 ms.
    pub fn wait_for_log(&self, text: &str, count: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.log_text().lines().filter(|l| l.contains(text)).count() >= count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits at most `timeout` for it to exit by itself (woken by a pidfd, not by polling).
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        if let Some(status) = self.child.try_wait()? {
            return Ok(Some(status));
        }
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32)
            .ok_or_else(|| io::Error::other("bad pid"))?;
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let limit =
                Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
            let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
            match poll(&mut fds, Some(&limit)) {
                Ok(0) => return self.child.try_wait(),
                Ok(_) => return self.child.wait().map(Some),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// What it wrote to stdout and nobody read yet, up to its end (call it once it has
    /// exited: it reads until the pipe closes).
    pub fn stdout_rest(&mut self) -> String {
        let mut text = String::new();
        if let Some(stdout) = &mut self._stdout {
            let _ = std::io::Read::read_to_string(stdout, &mut text);
        }
        text
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s; returns its exit status.
    pub fn stop(&mut self) -> io::Result<ExitStatus> {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        match self.wait_exit(Duration::from_secs(10))? {
            Some(status) => Ok(status),
            None => {
                self.child.kill()?;
                self.child.wait()
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A running `blitzen-server` and the address it listens on.
#[derive(Debug)]
pub struct ServerProcess {
    /// The process.
    pub process: Process,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl ServerProcess {
    /// `blitzen-server status --json` of it, parsed (the secret from the environment).
    pub fn status(&self) -> io::Result<serde_json::Value> {
        let output = Command::new(binary("blitzen-server")?)
            .args(["status", "--server", &self.addr, "--json"])
            .output()?;
        if !output.status.success() {
            let said = String::from_utf8_lossy(&output.stderr);
            return Err(io::Error::other(format!("status failed: {said}")));
        }
        serde_json::from_slice(&output.stdout).map_err(io::Error::other)
    }
}

/// Starts `blitzen-server` on 127.0.0.1 (port 0 unless `args` names one) and waits until it
/// listens.
pub fn start_server(args: &[&str]) -> io::Result<ServerProcess> {
    start_server_as(Command::new(binary("blitzen-server")?), args)
}

/// [`start_server`] for a `command` that runs `blitzen-server` (in a network namespace, say).
pub fn start_server_as(mut command: Command, args: &[&str]) -> io::Result<ServerProcess> {
    if !args.contains(&"--port") {
        command.args(["--port", "0"]);
    }
    command.args(args);
    let (mut process, stdout) = Process::spawn(command, "server")?;
    let mut stdout = BufReader::new(stdout.ok_or_else(|| io::Error::other("no stdout"))?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|a| a.contains(':'))
        .ok_or_else(|| {
            io::Error::other(format!("server did not start: {line:?}\n{}", process.log_text()))
        })?
        .to_string();
    process._stdout = Some(stdout.into_inner());
    Ok(ServerProcess { process, addr })
}

/// Starts the stock `blitzen-client` with `workers` workers, reporting itself as `name`.
pub fn start_agent(server: &str, workers: usize, name: &str) -> io::Result<Process> {
    start_agent_with(server, workers, name, &[])
}

/// [`start_agent`] with more flags.
pub fn start_agent_with(
    server: &str,
    workers: usize,
    name: &str,
    args: &[&str],
) -> io::Result<Process> {
    start_agent_as(Command::new(binary("blitzen-client")?), server, workers, name, args)
}

/// [`start_agent_with`] for a `command` that runs `blitzen-client` (in a network namespace,
/// say).
pub fn start_agent_as(
    mut command: Command,
    server: &str,
    workers: usize,
    name: &str,
    args: &[&str],
) -> io::Result<Process> {
    command.args(["--server", server, "--workers", &workers.to_string(), "--name", name]);
    command.args(args);
    let (mut process, stdout) = Process::spawn(command, name)?;
    process._stdout = stdout;
    Ok(process)
}

/// Starts any program as an agent-like process (a user's own client), stopped on drop.
pub fn start_program(mut command: Command, label: &str) -> io::Result<Process> {
    command.stdin(Stdio::null());
    let (mut process, stdout) = Process::spawn(command, label)?;
    process._stdout = stdout;
    Ok(process)
}

/// A file in the temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TempFile {
    /// Where it is.
    pub path: PathBuf,
}

impl TempFile {
    /// Creates it with `contents`.
    pub fn new(label: &str, contents: &[u8]) -> io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "blitzen-test-{}-{label}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::write(&path, contents)?;
        Ok(Self { path })
    }

    /// The path as a string, for command lines.
    pub fn arg(&self) -> &str {
        self.path.to_str().unwrap_or_default()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A driver for the server at `addr`, patient enough for a busy test machine.
pub fn driver(addr: &str) -> blitzen::distributed::DistributedDispatcher {
    blitzen::distributed::DistributedDispatcher::new(addr)
        .with_connect_timeout(Duration::from_secs(20))
}

/// A port that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    // Below the kernel's ephemeral range: a port it hands out (to any test's outgoing
    // connection, say) could be taken again between this check and the server's bind, and a
    // server restarted on its port could find it taken.
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000.min(ephemeral_start.saturating_sub(1_000));
    for _ in 0..1_000 {
        let port = fastrand::u16(low..ephemeral_start);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
