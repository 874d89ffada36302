//! Tasks that ship with every Blitzen binary, so a cluster is useful before anything is compiled
//! for it: [`sleep`](const@sleep), [`echo`], [`command`](const@command) (run any program, its
//! output in the result) and [`program`](const@program) (run any program as the task itself,
//! what the `blitzen` command line runs).

use std::io::Write;
use std::marker::PhantomData;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;

use crate as blitzen;
use crate::task::{Task, TaskEntry, fingerprint};

/// Sleeps for `seconds` (a non-negative, finite number) and returns it.
#[blitzen_macros::task(crate = blitzen, unregistered)]
pub fn sleep(seconds: f64) -> Result<f64, String> {
    let duration = Duration::try_from_secs_f64(seconds)
        .map_err(|e| format!("cannot sleep for {seconds} seconds: {e}"))?;
    std::thread::sleep(duration);
    Ok(seconds)
}

/// The handle of the built-in `echo` task, which returns its argument unchanged. Obtain it with
/// [`echo`]: `dispatcher.run(echo::<u64>(), 5)`.
#[derive(Debug)]
pub struct Echo<T>(PhantomData<fn() -> T>);

impl<T> Clone for Echo<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Echo<T> {}

/// The built-in `echo` task for values of type `T`: returns its argument unchanged, whatever
/// its type (the worker sends the encoded bytes back without decoding them).
pub const fn echo<T>() -> Echo<T> {
    Echo(PhantomData)
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Task for Echo<T> {
    type Args = T;
    type Output = T;
    const NAME: &'static str = "echo";
    const SIGNATURE: &'static str = ECHO_SIGNATURE;
    const FINGERPRINT: u64 = fingerprint(ECHO_SIGNATURE);
}

const ECHO_SIGNATURE: &str = "fn echo(T) -> T";

static ECHO_ENTRY: TaskEntry = TaskEntry {
    name: "echo",
    module: module_path!(),
    signature: ECHO_SIGNATURE,
    fingerprint: fingerprint(ECHO_SIGNATURE),
    invoke: |args| blitzen_protocol::Outcome::Value(bytes::Bytes::copy_from_slice(args)),
};

/// A program to run with the built-in [`command`](const@command) task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// The program: a path, or a name looked up in `PATH`.
    pub program: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables added to (or replacing) the worker's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Start from an empty environment (before `env` is applied).
    #[serde(default)]
    pub clear_env: bool,
    /// Working directory; the worker's own when `None`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Bytes fed to its standard input (which is closed after them).
    #[serde(default)]
    pub stdin: ByteBuf,
}

impl CommandSpec {
    /// `program` with no arguments.
    pub fn new(path: impl Into<String>) -> Self {
        Self { program: path.into(), ..Default::default() }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets the bytes fed to standard input.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = ByteBuf::from(bytes.into());
        self
    }
}

/// What a program run by [`command`](const@command) did. A non-zero exit is not a task failure: look at
/// [`CommandOutput::code`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandOutput {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that killed it, when it was killed.
    pub signal: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: ByteBuf,
    /// Everything it wrote to stderr.
    pub stderr: ByteBuf,
}

impl CommandOutput {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// The program of `spec`, with its arguments, environment and working directory.
fn prepared(spec: &CommandSpec) -> Command {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args);
    if spec.clear_env {
        cmd.env_clear();
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    cmd
}

/// Runs a program to completion and returns its exit status and output. Fails only when the
/// program cannot be started. The program runs in the worker's process group, so a timeout
/// kills it too.
#[blitzen_macros::task(crate = blitzen, unregistered)]
pub fn command(spec: CommandSpec) -> Result<CommandOutput, String> {
    use std::os::unix::process::ExitStatusExt;

    let mut cmd = prepared(&spec);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start `{}`: {e}", spec.program))?;
    let feeder = child.stdin.take().map(|mut pipe| {
        let input = spec.stdin.into_vec();
        // A program that exits without reading its input is not an error.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })
    });
    let output =
        child.wait_with_output().map_err(|e| format!("cannot wait for `{}`: {e}", spec.program))?;
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    Ok(CommandOutput {
        code: output.status.code(),
        signal: output.status.signal(),
        stdout: ByteBuf::from(output.stdout),
        stderr: ByteBuf::from(output.stderr),
    })
}

/// Runs a program to completion as the task itself: what it prints is the task's own output
/// (the result's captured stdout and stderr, and streamed as any task's), and an exit other
/// than 0 is the task's failure, saying how it ended. Returns 0. The program runs in the
/// worker's process group, so a timeout kills it too.
#[blitzen_macros::task(crate = blitzen, unregistered)]
pub fn program(spec: CommandSpec) -> Result<i32, String> {
    use std::os::unix::process::ExitStatusExt;

    let mut cmd = prepared(&spec);
    cmd.stdin(if spec.stdin.is_empty() { Stdio::null() } else { Stdio::piped() });
    let mut child = cmd.spawn().map_err(|e| format!("cannot start `{}`: {e}", spec.program))?;
    if let Some(mut pipe) = child.stdin.take() {
        // A program that exits without reading its input is not an error.
        let _ = pipe.write_all(&spec.stdin);
    }
    let status = child.wait().map_err(|e| format!("cannot wait for `{}`: {e}", spec.program))?;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(0),
        (Some(code), _) => Err(format!("`{}` exited with code {code}", spec.program)),
        (None, Some(signal)) => Err(format!("`{}` was killed by signal {signal}", spec.program)),
        (None, None) => Err(format!("`{}` ended: {status}", spec.program)),
    }
}

/// The registry entries of the built-in tasks.
/// Whether `entry` is one of the built-in tasks.
pub fn is_builtin(entry: &TaskEntry) -> bool {
    entry.module == module_path!()
}

pub(crate) fn entries() -> [&'static TaskEntry; 4] {
    static SLEEP: TaskEntry = sleep::__BLITZEN_ENTRY;
    static COMMAND: TaskEntry = command::__BLITZEN_ENTRY;
    static PROGRAM: TaskEntry = program::__BLITZEN_ENTRY;
    [&SLEEP, &ECHO_ENTRY, &COMMAND, &PROGRAM]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{decode_value, encode_value};
    use blitzen_protocol::Outcome;

    fn call<T: Task>(entry: &TaskEntry, args: &T::Args) -> Outcome {
        (entry.invoke)(&encode_value(args).expect("encodes"))
    }

    #[test]
    fn command_returns_status_and_output_and_feeds_stdin() {
        let spec = CommandSpec::new("sh")
            .args(["-c", "cat; echo \"$GREETING\" >&2; pwd; exit 3"])
            .env("GREETING", "hi")
            .cwd("/")
            .stdin("input\n");
        let out = command(spec).expect("sh runs");
        assert_eq!(out.code, Some(3));
        assert_eq!(&out.stdout[..], b"input\n/\n");
        assert_eq!(&out.stderr[..], b"hi\n");
        assert!(!out.success());
    }

    #[test]
    fn command_that_cannot_start_is_an_error() {
        let err = command(CommandSpec::new("/nonexistent/program")).expect_err("no such file");
        assert!(err.contains("/nonexistent/program"), "{err}");
    }

    #[test]
    fn sleep_refuses_negative_durations_and_echo_returns_its_input() {
        assert!(matches!(call::<sleep>(entries()[0], &-1.0), Outcome::Returned { .. }));
        let Outcome::Value(v) = call::<Echo<Vec<String>>>(entries()[1], &vec!["a".to_string()])
        else {
            panic!("echo returns a value")
        };
        assert_eq!(decode_value::<Vec<String>>(&v).expect("decodes"), vec!["a".to_string()]);
    }
}
