//! The Slurm back end: each agent is a batch job (`sbatch`) running one `blitzen-client`; the
//! jobs are found by their name (`squeue -n`) and withdrawn with `scancel`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{AutoscaleConfig, Backend, Phase};

/// The scheduler's options the autoscaler sets itself: the user's `-- ARGS` may not.
const OWN_OPTIONS: [&str; 4] = ["--job-name", "-J", "--time", "-t"];

/// What an agent's time limit keeps free before its job's: the agent stops taking long tasks,
/// and leaves, this much before Slurm would end the job.
pub(crate) fn margin(limit: Duration) -> Duration {
    (limit / 10).clamp(Duration::from_secs(2), Duration::from_secs(60))
}

/// Slurm's `--time`: hours, minutes and seconds.
fn slurm_time(limit: Duration) -> String {
    let secs = limit.as_secs().max(1);
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// A word for `sh`, in single quotes.
pub(crate) fn quoted(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Agents as Slurm jobs.
#[derive(Debug)]
pub struct Slurm {
    /// The jobs' name: this server's, so that `squeue -n` finds its jobs and no one else's.
    job_name: String,
    /// The options of every `sbatch`, the job script last.
    sbatch: Vec<String>,
}

impl Slurm {
    /// Checks the user's scheduler arguments and writes the job script next to the address
    /// file. `server` names this server (its identity, kept with its data directory): jobs it
    /// asked for before a restart are its own again.
    pub fn new(config: &AutoscaleConfig, server: u64) -> Result<Self, String> {
        for arg in &config.scheduler_args {
            let option = arg.split('=').next().unwrap_or(arg);
            if OWN_OPTIONS.contains(&option) {
                return Err(format!(
                    "`{arg}` after --: the autoscaler sets the jobs' name and time itself \
                     (--agent-time-limit sets the time)"
                ));
            }
        }
        let job_name = format!("blitzen-agent-{:08x}", server as u32);
        let dir = config.address_file.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        let script = dir.join(format!(".{job_name}.sh"));
        std::fs::write(&script, job_script(config))
            .map_err(|e| format!("cannot write the job script {}: {e}", script.display()))?;
        let output = dir.join(format!("{job_name}-%j.log"));
        let mut sbatch = vec![
            "--parsable".to_string(),
            format!("--job-name={job_name}"),
            format!("--time={}", slurm_time(config.agent_time_limit)),
            format!("--cpus-per-task={}", config.agent_workers),
            format!("--output={}", output.display()),
        ];
        sbatch.extend(config.scheduler_args.iter().cloned());
        sbatch.push(script.display().to_string());
        Ok(Self { job_name, sbatch })
    }
}

/// The job script: one agent for the length of the job, leaving when idle or before its time
/// limit, and when the server has been gone for as long as its idle timeout.
fn job_script(c: &AutoscaleConfig) -> String {
    let limit = c.agent_time_limit.saturating_sub(margin(c.agent_time_limit));
    let mut line: Vec<String> = c.agent_command.iter().map(|w| quoted(w)).collect();
    line.extend(["--server-file".into(), quoted(&c.address_file.display().to_string())]);
    if let Some(secret) = &c.secret_file {
        line.extend(["--secret-file".into(), quoted(&secret.display().to_string())]);
    }
    let secs = |d: Duration| format!("{}", d.as_secs_f64());
    line.extend([
        "--workers".into(),
        c.agent_workers.to_string(),
        "--idle-timeout".into(),
        secs(c.idle_timeout),
        "--time-limit".into(),
        secs(limit.max(Duration::from_secs(1))),
        "--give-up-after".into(),
        secs(c.idle_timeout),
        "--allocation".into(),
        "\"$SLURM_JOB_ID\"".into(),
    ]);
    format!(
        "#!/bin/sh\n# One Blitzen agent for the length of this job, asked for by \
         blitzen-server --autoscale slurm.\nexec {}\n",
        line.join(" ")
    )
}

impl Backend for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn submit(&self) -> Vec<String> {
        std::iter::once("sbatch".to_string()).chain(self.sbatch.iter().cloned()).collect()
    }

    fn submitted(&self, out: &str) -> Result<String, String> {
        // `--parsable`: the job id, then `;cluster` on a federation.
        let id = out.trim().split(';').next().unwrap_or("").trim();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("sbatch printed no job id: `{}`", out.trim()));
        }
        Ok(id.to_string())
    }

    fn list(&self) -> Vec<String> {
        ["squeue", "--noheader", "--name", &self.job_name, "--format=%i %T"]
            .map(String::from)
            .into()
    }

    fn listed(&self, out: &str) -> Vec<(String, Phase)> {
        parse_squeue(out)
    }

    fn cancel(&self, ids: &[String]) -> Vec<String> {
        std::iter::once("scancel".to_string()).chain(ids.iter().cloned()).collect()
    }
}

/// `squeue --format='%i %T'` lines: a job's id and state. A job still to start is pending;
/// one allocated (configuring, running, completing) has started.
fn parse_squeue(out: &str) -> Vec<(String, Phase)> {
    let phase = |state: &str| match state {
        "CONFIGURING" | "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" | "SUSPENDED" => {
            Phase::Running
        }
        _ => Phase::Pending,
    };
    (out.lines())
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (id, state) = (words.next()?, words.next()?);
            Some((id.to_string(), phase(state)))
        })
        .collect()
}

/// Where the `blitzen-client` binary is: next to this server's, else on the PATH.
pub fn default_agent_program() -> PathBuf {
    let beside = std::env::current_exe().ok().and_then(|exe| {
        let candidate = exe.parent()?.join("blitzen-client");
        candidate.is_file().then_some(candidate)
    });
    beside.unwrap_or_else(|| PathBuf::from("blitzen-client"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_times_and_margins() {
        assert_eq!(slurm_time(Duration::from_secs(3600)), "1:00:00");
        assert_eq!(slurm_time(Duration::from_secs(90)), "0:01:30");
        assert_eq!(slurm_time(Duration::from_millis(300)), "0:00:01");
        assert_eq!(margin(Duration::from_secs(3600)), Duration::from_secs(60));
        assert_eq!(margin(Duration::from_secs(10)), Duration::from_secs(2));
        assert_eq!(margin(Duration::from_secs(300)), Duration::from_secs(30));
    }

    #[test]
    fn squeue_lines_are_jobs_and_their_phase() {
        let out = "12 PENDING\n13 RUNNING\n14 COMPLETING\n\n15 CONFIGURING\n";
        let jobs = parse_squeue(out);
        let phases: Vec<(&str, Phase)> = jobs.iter().map(|(i, p)| (i.as_str(), *p)).collect();
        assert_eq!(
            phases,
            [
                ("12", Phase::Pending),
                ("13", Phase::Running),
                ("14", Phase::Running),
                ("15", Phase::Running)
            ]
        );
    }

    #[test]
    fn the_job_script_runs_one_agent_that_leaves_on_its_own() {
        let dir = std::env::temp_dir().join(format!("blitzen-slurm-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a folder");
        let config = AutoscaleConfig {
            address_file: dir.join("it's.address"),
            secret_file: Some(dir.join("secret")),
            agent_command: vec!["/opt/blitzen/my-app".into(), "agent".into()],
            agent_workers: 8,
            agent_time_limit: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(300),
            scheduler_args: vec!["--partition=short".into()],
            ..AutoscaleConfig::default()
        };
        let slurm = Slurm::new(&config, 0xdead_beef).expect("a back end");
        let script =
            std::fs::read_to_string(dir.join(".blitzen-agent-deadbeef.sh")).expect("a script");
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(script.contains("exec '/opt/blitzen/my-app' 'agent' --server-file"), "{script}");
        assert!(script.contains(r"it'\''s.address"), "quoted: {script}");
        assert!(script.contains("--workers 8 --idle-timeout 300 --time-limit 3540"), "{script}");
        assert!(script.contains("--allocation \"$SLURM_JOB_ID\""), "{script}");
        let line = super::super::describe(&slurm.submit());
        assert!(
            line.starts_with("sbatch '--parsable' '--job-name=blitzen-agent-deadbeef'"),
            "{line}"
        );
        assert!(line.contains("'--time=1:00:00' '--cpus-per-task=8'"), "{line}");
        assert!(line.contains("'--partition=short'"), "{line}");
        assert!(line.ends_with(".blitzen-agent-deadbeef.sh'"), "{line}");
        let refused = AutoscaleConfig { scheduler_args: vec!["-t".into(), "5".into()], ..config };
        let error = Slurm::new(&refused, 1).expect_err("sets its own time");
        assert!(error.contains("--agent-time-limit"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
