//! The seed's `spawn_server` and `spawn_client`: a server, or an agent, run in this process
//! with the dispatcher's address, secret and TLS settings.

use std::time::Duration;

use blitzen_client::AgentConfig;
use blitzen_common::logging;
use blitzen_common::pool::WorkerCommand;
use blitzen_common::worker::is_unentered_worker;
use blitzen_protocol::Capacity;
use blitzen_server::{Secrets, ServerConfig};
use tracing::warn;

use super::{Cluster, resolve};
use crate::dispatcher::Dispatcher;
use crate::error::DispatchError;
use crate::tasks::Tasks;

/// What an agent run by `spawn_agent` does beyond serving its tasks (the Python package's
/// agent takes them from its flags; see `blitzen-client --help` for each).
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// What its running tasks may hold at once; `None`: one CPU per worker, the machine's
    /// memory.
    pub capacity: Option<Capacity>,
    /// Stop once the server has not been reachable this long.
    pub give_up_after: Option<Duration>,
    /// Leave once no task was held this long.
    pub idle_timeout: Option<Duration>,
    /// Leave this long after starting, taking no task that would outlast it.
    pub time_limit: Option<Duration>,
    /// The allocation it runs in (default: `SLURM_JOB_ID`).
    pub allocation: Option<String>,
    /// Read the server's address and fingerprint from this file before each attempt, instead
    /// of the dispatcher's address.
    pub server_file: Option<std::path::PathBuf>,
}

/// When this program was started as a cluster agent — its first argument is `agent` — serves as
/// one and exits; otherwise returns at once. Call it first in `main`, after
/// [`worker_main`](crate::worker_main):
///
/// ```no_run
/// blitzen::worker_main();
/// blitzen::distributed::agent_main(blitzen::tasks![]); // `my-app agent …` ends here
/// // … the program as a driver
/// ```
///
/// `my-app agent --server HOST --workers 8` is then an agent serving `tasks` (named as for
/// [`spawn_client`](Dispatcher::spawn_client)) and the built-in ones, with every flag of
/// `blitzen-client` (`my-app agent --help`), until Ctrl-C or SIGTERM, or until it leaves
/// (`--idle-timeout`, `--time-limit`): what `blitzen-server --autoscale slurm --agent-program
/// "my-app agent"` starts in each job.
pub fn agent_main(tasks: Tasks) {
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_default();
    if args.next().as_deref() != Some(std::ffi::OsStr::new("agent")) {
        return;
    }
    let stem = std::path::Path::new(&program).file_name().map(|n| n.to_string_lossy().into_owned());
    // Named once for the life of the process, which ends below.
    let name: &'static str =
        Box::leak(format!("{} agent", stem.unwrap_or_default()).into_boxed_str());
    if let Ok(empty) = tasks.crates_without_tasks() {
        for krate in empty {
            eprintln!(
                "{name}: `{krate}` is named in blitzen::tasks![] but none of its functions is a \
                 #[blitzen::task]"
            );
        }
    }
    let args = std::iter::once(std::ffi::OsString::from(name)).chain(args);
    let code = blitzen_client::cli::main_with(name, args);
    std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
}

impl Dispatcher<Cluster> {
    /// Runs a server on this dispatcher's address for `duration` (until Ctrl-C or SIGTERM when
    /// `None`), then shuts it down cleanly. Blocks meanwhile, like the seed's `spawn_server`.
    pub fn spawn_server(&self, duration: impl Into<Option<Duration>>) -> Result<(), DispatchError> {
        let server = &self.backend.server;
        let addr = resolve(server)
            .map_err(|source| DispatchError::Resolve { server: server.clone(), source })?;
        logging::install();
        let config = ServerConfig {
            bind: addr.ip(),
            port: addr.port(),
            secrets: self.backend.secret()?.map(Secrets::both).unwrap_or_default(),
            allow_insecure: self.backend.insecure,
            plaintext: self.backend.tls.plaintext,
            data_dir: self.backend.data_dir.clone(),
            ..ServerConfig::default()
        };
        blitzen_server::serve_until(config, duration.into(), |_| Ok(()))?;
        Ok(())
    }

    /// Runs an agent with `workers` worker processes for this dispatcher's server, until Ctrl-C
    /// or SIGTERM; it waits for the server and reconnects by itself. The seed's
    /// `spawn_client(workers=6)`.
    ///
    /// `tasks` names the crates of the tasks it serves: `blitzen::tasks![my_tasks]`, or
    /// `blitzen::tasks![]` when they are in this program's own modules (the built-in tasks are
    /// always served). The workers are this program re-executed, so `main` must call
    /// [`worker_main`](crate::worker_main) first. The agent logs every task it serves when it
    /// starts; a crate named without any task is a warning.
    pub fn spawn_client(&self, tasks: Tasks, workers: usize) -> Result<(), DispatchError> {
        self.spawn_client_with(tasks, workers, WorkerCommand::this_binary())
    }

    /// [`spawn_client`](Self::spawn_client), the agent offering `capacity` (CPUs, memory,
    /// counted resources such as GPUs) instead of one CPU per worker and the machine's memory:
    /// `Capacity::of_machine(workers).with_resource("gpu", 2)`.
    pub fn spawn_client_offering(
        &self,
        tasks: Tasks,
        workers: usize,
        capacity: Capacity,
    ) -> Result<(), DispatchError> {
        let options = AgentOptions { capacity: Some(capacity), ..AgentOptions::default() };
        self.spawn_agent(tasks, workers, WorkerCommand::this_binary(), options)
    }

    /// [`spawn_client`](Self::spawn_client) whose workers run `command` instead of this program
    /// (the Python package's agent runs its interpreter).
    pub fn spawn_client_with(
        &self,
        tasks: Tasks,
        workers: usize,
        command: WorkerCommand,
    ) -> Result<(), DispatchError> {
        self.spawn_agent(tasks, workers, command, AgentOptions::default())
    }

    /// Runs an agent in this process until Ctrl-C or SIGTERM, or until it stops as `options`
    /// say.
    #[doc(hidden)]
    pub fn spawn_agent(
        &self,
        tasks: Tasks,
        workers: usize,
        command: WorkerCommand,
        options: AgentOptions,
    ) -> Result<(), DispatchError> {
        if is_unentered_worker() {
            return Err(DispatchError::WorkerEntryMissing);
        }
        logging::install();
        let empty = tasks.crates_without_tasks().map_err(blitzen_common::pool::PoolError::from)?;
        for krate in empty {
            warn!(
                %krate,
                "`{krate}` is named in blitzen::tasks![] but none of its functions is a \
                 #[blitzen::task]"
            );
        }
        let mut config = AgentConfig::new(&self.backend.server, workers);
        config.pool.command = command;
        config.pool.capacity = options.capacity;
        config.secret = self.backend.secret()?;
        config.tls = self.backend.tls.clone();
        config.give_up_after = options.give_up_after;
        config.idle_timeout = options.idle_timeout;
        config.time_limit = options.time_limit;
        config.server_file = options.server_file;
        if let Some(allocation) = options.allocation {
            config.allocation = allocation;
        }
        blitzen_client::run_until_signal(config)?;
        Ok(())
    }
}
