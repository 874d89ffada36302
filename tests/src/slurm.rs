//! A one-host Slurm cluster of a test's own: its own munge daemon and key, its own
//! `slurm.conf` (ports chosen free, state and spool directories in a temporary folder), and
//! `slurmctld` and `slurmd` in the foreground, all stopped — and every job cancelled — when it
//! is dropped. The Slurm commands find it through `SLURM_CONF`, which [`Slurm::command`] sets.
//!
//! It needs root (`SlurmUser=root`, and `slurmd` runs jobs as their user) and Debian's
//! `slurm-wlm` (`./test.sh` installs it when run as root); [`unavailable`] says why not.
//! The node offers 8 CPUs whatever the machine has (`SlurmdParameters=config_overrides`), so
//! that tests can run several one-CPU jobs at once on two cores.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::free_port;

/// CPUs the node offers.
pub const CPUS: u32 = 8;

/// A running Slurm cluster of one node.
#[derive(Debug)]
pub struct Slurm {
    /// Its folder: configuration, key, state, spool, logs.
    pub dir: PathBuf,
    conf: PathBuf,
    /// The daemons, last started first: slurmd, slurmctld, munged.
    daemons: Vec<Child>,
}

/// Why a Slurm cluster cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("a Slurm cluster of the test's own needs root (it runs jobs as root)".into());
    }
    let missing: Vec<&str> = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel"]
        .into_iter()
        .filter(|program| which(program).is_none())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "Slurm is not installed ({} missing): ./test.sh installs slurm-wlm when run as root",
            missing.join(", ")
        )
    })
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]);
    dirs.map(|d| d.join(program)).find(|p| p.is_file())
}

/// This machine's short host name: Slurm's name for the node.
fn short_host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    name.trim().split('.').next().unwrap_or("localhost").to_string()
}

impl Slurm {
    /// Starts munge, slurmctld and slurmd, and waits until the node takes jobs.
    pub fn start(label: &str) -> io::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("blitzen-slurm-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["munge", "state", "spool", "jobs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut slurm = Self { conf: dir.join("slurm.conf"), dir, daemons: Vec::new() };
        slurm.start_munge()?;
        std::fs::write(&slurm.conf, slurm.config(free_port()?, free_port()?))?;
        let conf = slurm.conf.display().to_string();
        slurm.daemon("slurmctld", &["-D", "-i", "-f", &conf])?;
        slurm.daemon("slurmd", &["-D", "-f", &conf])?;
        slurm.wait_idle(Duration::from_secs(30))?;
        Ok(slurm)
    }

    /// A munge daemon of its own: its own key and socket, as root (`--force`).
    fn start_munge(&mut self) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let munge = self.dir.join("munge");
        std::fs::set_permissions(&munge, std::fs::Permissions::from_mode(0o755))?;
        let mut key = vec![0u8; 128];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
        let key_file = munge.join("key");
        std::fs::write(&key_file, &key)?;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
        let arg = |name: &str, file: &str| format!("--{name}={}", munge.join(file).display());
        self.daemon(
            "munged",
            &[
                "-F",
                "--force",
                &arg("socket", "socket"),
                &arg("key-file", "key"),
                &arg("log-file", "log"),
                &arg("pid-file", "pid"),
                &arg("seed-file", "seed"),
            ],
        )?;
        let socket = munge.join("socket");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("munged did not start:\n{}", self.logs())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn config(&self, ctld_port: u16, slurmd_port: u16) -> String {
        let host = short_host_name();
        let d = self.dir.display();
        format!(
            "ClusterName=blitzentest\n\
             SlurmctldHost={host}(127.0.0.1)\n\
             SlurmUser=root\nSlurmdUser=root\n\
             SlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n\
             AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={d}/munge/socket\n\
             StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
             SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
             SlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
             SlurmdParameters=config_overrides\n\
             SchedulerType=sched/backfill\nMpiDefault=none\nReturnToService=2\n\
             JobCompType=jobcomp/none\nAccountingStorageType=accounting_storage/none\n\
             JobAcctGatherType=jobacct_gather/none\n\
             InactiveLimit=0\nMinJobAge=2\nKillWait=5\nMessageTimeout=20\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs={CPUS} State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n"
        )
    }

    fn daemon(&mut self, program: &str, args: &[&str]) -> io::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{program}.out")))?;
        let child = Command::new(which(program).unwrap_or_else(|| program.into()))
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.daemons.push(child);
        Ok(())
    }

    /// A Slurm command (`sbatch`, `squeue`, …) for this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", &self.conf);
        command
    }

    /// Where its jobs may write (a folder of its own).
    pub fn jobs_dir(&self) -> PathBuf {
        self.dir.join("jobs")
    }

    /// The `SLURM_CONF` of it, for a program that runs Slurm commands.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// Every job it holds: id and state.
    pub fn jobs(&self) -> io::Result<Vec<(String, String)>> {
        let out = self.command("squeue").args(["--noheader", "--format=%i %T"]).output()?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            return Err(io::Error::other(format!("squeue failed: {said}")));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                Some((words.next()?.to_string(), words.next()?.to_string()))
            })
            .collect())
    }

    /// Waits until it holds no job, for at most `limit` (Slurm says nothing when a job ends:
    /// squeue is asked every 100 ms).
    pub fn wait_no_jobs(&self, limit: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + limit;
        loop {
            if self.jobs()?.is_empty() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `sinfo` shows the node idle.
    fn wait_idle(&self, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.command("sinfo").args(["--noheader", "--format=%t"]).output()?;
            if String::from_utf8_lossy(&out.stdout).trim() == "idle" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "the Slurm node did not become idle in {limit:?}:\n{}",
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemons' logs, for a failure's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in [
            "munge/log",
            "munged.out",
            "slurmctld.log",
            "slurmctld.out",
            "slurmd.log",
            "slurmd.out",
        ] {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            if !tail.is_empty() {
                out.push_str(&format!("--- {name}\n"));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        // Every job first, while slurmd is there to end their processes.
        let _ = self.command("scancel").args(["--user", "root"]).status();
        let _ = self.wait_no_jobs(Duration::from_secs(20));
        for child in self.daemons.iter_mut().rev() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        for child in &mut self.daemons {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
