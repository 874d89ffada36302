//! The distributed path's processes: a server and agents, each this program re-executed in
//! another role (`BLITZEN_BENCH_ROLE`), so that the agents' workers know the benchmark's tasks.
//! A child reports on stdout (the server its address, an agent `ready` once connected) and
//! stops when its stdin closes — so it also stops if the benchmark dies. CPU time and memory
//! of processes, read from `/proc`, are in `usage`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use blitzen::distributed::DistributedDispatcher;
use blitzen_client::AgentConfig;
use blitzen_server::{Server, ServerConfig};
use rustix::process::{Pid, Signal, kill_process};
use tokio_util::sync::CancellationToken;

const ROLE: &str = "BLITZEN_BENCH_ROLE";
pub const SERVER: &str = "BLITZEN_BENCH_SERVER";
const WORKERS: &str = "BLITZEN_BENCH_WORKERS";
const DATA_DIR: &str = "BLITZEN_BENCH_DATA_DIR";
/// When set: the cluster's secret is this; `BLITZEN_BENCH_PLAINTEXT` turns encryption off.
const SECRET: &str = "BLITZEN_BENCH_SECRET";
const PLAINTEXT: &str = "BLITZEN_BENCH_PLAINTEXT";
/// When set: the server serves its dashboard on 127.0.0.1 (any port) and says where.
const DASHBOARD: &str = "BLITZEN_BENCH_DASHBOARD";
/// A driver's number of tasks (W16).
pub const TASKS: &str = "BLITZEN_BENCH_TASKS";
/// How many agents a simulating process holds (W17).
pub const AGENTS: &str = "BLITZEN_BENCH_AGENTS";

/// The secret of the benchmark's secured clusters.
const BENCH_SECRET: &str = "the benchmark's own cluster secret";

/// This child's secret and whether it turns encryption off, from its environment.
fn security() -> Result<(Option<blitzen_net::Secret>, bool)> {
    let secret = match std::env::var(SECRET) {
        Ok(text) => Some(blitzen_net::Secret::new(text, SECRET).map_err(|e| e.to_string())?),
        Err(_) => None,
    };
    Ok((secret, std::env::var_os(PLAINTEXT).is_some()))
}

/// How long a child may take to report.
const REPORT_LIMIT: Duration = Duration::from_secs(120);

/// How long a child may take to stop once asked.
const STOP_LIMIT: Duration = Duration::from_secs(10);

pub use crate::Result;

/// In a child process: plays its role — a cluster's, or one of `other_roles` (the workloads'
/// own, which answers `None` for a role it does not know) — and returns the exit code; `None`
/// in the benchmark itself.
pub fn child_role(other_roles: fn(&str) -> Option<Result<()>>) -> Option<ExitCode> {
    let role = std::env::var(ROLE).ok()?;
    // Agents leaving at the end of a workload are no news here.
    let _ = blitzen::logging::set_loglevel("error");
    let result = match role.as_str() {
        "server" => serve(),
        "agent" => agent(),
        "echo" => echo(),
        other => other_roles(other).unwrap_or_else(|| Err(format!("unknown role `{other}`"))),
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench {role}: {e}");
            ExitCode::FAILURE
        }
    })
}

/// A token cancelled when stdin closes: the benchmark is done with this process, or gone.
fn stdin_closed() -> CancellationToken {
    let token = CancellationToken::new();
    let closed = token.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        closed.cancel();
    });
    token
}

pub fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))
}

/// The echo role: connects to the address in `SERVER` and sends back every byte it reads,
/// sleeping in `read` between them, until the other side closes.
fn echo() -> Result<()> {
    let addr = std::env::var(SERVER).map_err(|_| "no address to echo to")?;
    let mut stream =
        std::net::TcpStream::connect(&addr).map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let mut byte = [0u8; 1];
    while stream.read_exact(&mut byte).is_ok() {
        stream.write_all(&byte).map_err(|e| format!("echo: {e}"))?;
    }
    Ok(())
}

/// The machine's floor for one round trip between two processes: p50 of `trips` one-byte
/// round trips over loopback TCP to an echo process, both sides sleeping in `read`. Nothing of
/// Blitzen runs; W2 crosses such a link twice per hop.
pub fn wake_up_floor_us(trips: usize) -> Result<f64> {
    let listener =
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("address: {e}"))?;
    let _echo = Proc::spawn("echo", &[(SERVER, addr.to_string())])?;
    let (mut stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let mut byte = [7u8; 1];
    let mut trips_us = Vec::with_capacity(trips);
    for i in 0..trips + trips / 10 {
        let start = std::time::Instant::now();
        stream.write_all(&byte).map_err(|e| format!("send: {e}"))?;
        stream.read_exact(&mut byte).map_err(|e| format!("receive: {e}"))?;
        // The first tenth warms up.
        if i >= trips / 10 {
            trips_us.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    trips_us.sort_by(f64::total_cmp);
    Ok(crate::stats::percentile(&trips_us, 0.50))
}

/// Lets this process open as many files as it may (the soft limit up to the hard one): a server
/// of 1,000 agents holds more sockets than the usual soft limit of 1,024.
fn raise_open_files() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, ..limit });
}

fn serve() -> Result<()> {
    raise_open_files();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let data_dir = std::env::var_os(DATA_DIR).map(std::path::PathBuf::from);
        let (secret, plaintext) = security()?;
        let config = ServerConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            data_dir,
            secrets: secret.map(blitzen_net::Secrets::both).unwrap_or_default(),
            plaintext,
            dashboard: std::env::var_os(DASHBOARD)
                .map(|_| std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
            ..Default::default()
        };
        let server = Server::bind(config).await.map_err(|e| e.to_string())?;
        let addr = server.local_addr().map_err(|e| e.to_string())?;
        say(&addr.to_string())?;
        if let Some(dashboard) = server.dashboard_addr() {
            say(&dashboard.to_string())?;
        }
        server.run(stdin_closed()).await.map_err(|e| e.to_string())
    })
}

/// A child's setting from its environment.
pub fn setting(name: &str) -> Result<String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

/// A child's numeric setting from its environment.
pub fn number<T: std::str::FromStr>(name: &str) -> Result<T> {
    setting(name)?.parse().map_err(|_| format!("{name} is not a number"))
}

fn agent() -> Result<()> {
    let server = setting(SERVER)?;
    let workers: usize = number(WORKERS)?;
    let mut config = AgentConfig::new(&server, workers);
    let (secret, plaintext) = security()?;
    config.secret = secret;
    config.tls.plaintext = plaintext;
    let connected = Arc::new(tokio::sync::Notify::new());
    config.connected = Some(connected.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        tokio::spawn(async move {
            connected.notified().await;
            if let Err(e) = say("ready") {
                eprintln!("bench agent: {e}");
            }
        });
        blitzen_client::run(config, stdin_closed()).await.map_err(|e| e.to_string())
    })
}

/// A child process in a role; stopped (stdin closed, then killed if it lingers) when dropped.
pub struct Proc {
    role: &'static str,
    pid: u32,
    /// Taken by `drop`, which waits for it on another thread.
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(role: &'static str, env: &[(&str, String)]) -> Result<Self> {
        let program = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let mut command = Command::new(program);
        command.env(ROLE, role).stdin(Stdio::piped()).stdout(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().map_err(|e| format!("cannot start the {role}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { role, pid: child.id(), child: Some(child), stdin, lines })
    }

    /// Starts a server on 127.0.0.1 (any free port); returns it with its address.
    pub fn server() -> Result<(Self, String)> {
        Self::server_in(None)
    }

    /// [`Proc::server`], keeping its state in `data_dir` when given.
    pub fn server_in(data_dir: Option<&std::path::Path>) -> Result<(Self, String)> {
        Self::server_with(data_dir, Security::Open)
    }

    /// [`Proc::server_in`] with the given security.
    fn server_with(
        data_dir: Option<&std::path::Path>,
        security: Security,
    ) -> Result<(Self, String)> {
        let mut env: Vec<(&str, String)> =
            data_dir.map(|d| (DATA_DIR, d.display().to_string())).into_iter().collect();
        env.extend(security.env());
        let mut server = Self::spawn("server", &env)?;
        let addr = server.next_line()?;
        Ok((server, addr))
    }

    /// A server serving its dashboard too: it, its address, and the dashboard's.
    fn server_watched() -> Result<(Self, String, String)> {
        let mut server = Self::spawn("server", &[(DASHBOARD, "1".into())])?;
        let addr = server.next_line()?;
        let dashboard = server.next_line()?;
        Ok((server, addr, dashboard))
    }

    /// Starts an agent with `workers` workers for the server at `addr`; see [`Proc::ready`].
    pub fn agent(addr: &str, workers: usize) -> Result<Self> {
        Self::agent_with(addr, workers, Security::Open)
    }

    fn agent_with(addr: &str, workers: usize, security: Security) -> Result<Self> {
        let mut env = vec![(SERVER, addr.to_string()), (WORKERS, workers.to_string())];
        env.extend(security.env());
        Self::spawn("agent", &env)
    }

    /// A process of `agents` simulated agents (W17); [`Proc::ready`] once all are connected.
    pub fn simulated_agents(addr: &str, agents: usize) -> Result<Self> {
        Self::spawn("simagents", &[(SERVER, addr.to_string()), (AGENTS, agents.to_string())])
    }

    /// Starts W16's driver of `tasks` tasks for the server at `addr`; it reports its memory,
    /// then, after [`Proc::go`], its seconds and peak memory ([`Proc::report`]).
    pub fn driver(addr: &str, tasks: u64) -> Result<Self> {
        Self::spawn("driver", &[(SERVER, addr.to_string()), (TASKS, tasks.to_string())])
    }

    /// Starts W20's awaiter: a driver of the server in `env`'s `SERVER`, or a multicore
    /// dispatcher of its own without it; it reports once ([`Proc::report`]).
    pub fn awaiter(env: &[(&str, String)]) -> Result<Self> {
        Self::spawn("awaiter", env)
    }

    /// Tells a driver to start.
    pub fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or("the driver's stdin is closed")?;
        writeln!(stdin, "go").and_then(|()| stdin.flush()).map_err(|e| format!("driver: {e}"))
    }

    /// The next line the child reports.
    pub fn report(&mut self) -> Result<String> {
        self.next_line()
    }

    /// Waits until an agent says it is connected with its workers up.
    pub fn ready(&mut self) -> Result<()> {
        match self.next_line()?.as_str() {
            "ready" => Ok(()),
            other => Err(format!("the {} said `{other}`, not `ready`", self.role)),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn next_line(&mut self) -> Result<String> {
        match self.lines.recv_timeout(REPORT_LIMIT) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => {
                Err(format!("the {} did not report within {REPORT_LIMIT:?}", self.role))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(format!("the {} exited before reporting (its stderr says why)", self.role))
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let Some(mut child) = self.child.take() else { return };
        // Wait on a thread, so that a child that ignores its closed stdin can be killed. The
        // child is reaped only by that thread, so its pid cannot be reused before the kill.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        if rx.recv_timeout(STOP_LIMIT).is_err() {
            eprintln!("bench: the {} (pid {}) did not stop; killing it", self.role, self.pid);
            if let Some(pid) = Pid::from_raw(self.pid as i32) {
                let _ = kill_process(pid, Signal::KILL);
            }
            let _ = rx.recv_timeout(STOP_LIMIT);
        }
    }
}

/// How a benchmark cluster's connections are secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// No secret, in the clear (loopback).
    Open,
    /// A secret, and TLS 1.3 (the default with a secret).
    Encrypted,
    /// A secret, in the clear (`--insecure-plaintext` everywhere).
    Plaintext,
}

impl Security {
    fn env(self) -> Vec<(&'static str, String)> {
        match self {
            Security::Open => vec![],
            Security::Encrypted => vec![(SECRET, BENCH_SECRET.into())],
            Security::Plaintext => vec![(SECRET, BENCH_SECRET.into()), (PLAINTEXT, "1".into())],
        }
    }
}

/// A server and agents as child processes, and a driver for them.
pub struct Cluster {
    // Agents stop before the server (fields drop in order).
    pub agents: Vec<Proc>,
    pub server: Proc,
    pub addr: String,
    security: Security,
    /// The dashboard's address, when the server serves one.
    pub dashboard: Option<String>,
}

impl Cluster {
    /// A server and `agents` agents of `workers` workers each, all connected.
    pub fn start(agents: usize, workers: usize) -> Result<Self> {
        Self::start_in(None, agents, workers)
    }

    /// [`Cluster::start`] with a server that keeps its state in `data_dir` when given.
    pub fn start_in(
        data_dir: Option<&std::path::Path>,
        agents: usize,
        workers: usize,
    ) -> Result<Self> {
        Self::start_with(data_dir, agents, workers, Security::Open)
    }

    /// [`Cluster::start`] with a secret, encrypted or not.
    pub fn start_secured(agents: usize, workers: usize, security: Security) -> Result<Self> {
        Self::start_with(None, agents, workers, security)
    }

    fn start_with(
        data_dir: Option<&std::path::Path>,
        agents: usize,
        workers: usize,
        security: Security,
    ) -> Result<Self> {
        let (server, addr) = Proc::server_with(data_dir, security)?;
        let cluster = Self { agents: Vec::new(), server, addr, security, dashboard: None };
        cluster.with_agents(agents, workers)
    }

    /// [`Cluster::start`] with a server that serves its dashboard.
    pub fn start_watched(agents: usize, workers: usize) -> Result<Self> {
        let (server, addr, dashboard) = Proc::server_watched()?;
        let security = Security::Open;
        let cluster =
            Self { agents: Vec::new(), server, addr, security, dashboard: Some(dashboard) };
        cluster.with_agents(agents, workers)
    }

    /// Starts `agents` agents of `workers` workers each and waits until all are connected.
    fn with_agents(mut self, agents: usize, workers: usize) -> Result<Self> {
        for _ in 0..agents {
            self.agents.push(Proc::agent_with(&self.addr, workers, self.security)?);
        }
        for agent in &mut self.agents {
            agent.ready()?;
        }
        Ok(self)
    }

    /// The server's status, asked as an observer (an open cluster's only).
    pub fn status(&self) -> Result<Box<blitzen_protocol::status::ClusterStatus>> {
        if self.security != Security::Open {
            return Err("the bench asks only open clusters for their status".into());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let request = blitzen_protocol::cluster::FromObserver::Status;
        let tls = blitzen_net::PeerTls::default();
        let limit = Duration::from_secs(10);
        let ask = blitzen_server::observe::ask(&self.addr, None, &tls, request, limit);
        match runtime.block_on(ask).map_err(|e| e.to_string())? {
            blitzen_protocol::cluster::ToObserver::Status(status) => Ok(status),
            other => Err(format!("status: the server answered {other:?}")),
        }
    }

    pub fn dispatcher(&self) -> DistributedDispatcher {
        let d = DistributedDispatcher::new(&self.addr);
        match (self.security, blitzen_net::Secret::new(BENCH_SECRET, "bench")) {
            (Security::Open, _) | (_, Err(_)) => d,
            (security, Ok(secret)) => {
                d.with_secret(secret).insecure_plaintext(security == Security::Plaintext)
            }
        }
    }
}
