//! Child processes the runtime starts (subprocess agents, child machines run through
//! `cli::SubprocessInvoker`, spawned workers): which environment they get ([`ChildEnv`]) and
//! how one call to a program is run within limits.
//!
//! A call ([`run_bounded`], crate-internal) writes the request to the child's stdin while
//! draining its stdout and stderr (so neither side can block the other on a full pipe), keeps
//! at most [`DEFAULT_MAX_OUTPUT`] bytes of stdout (configurable; past it the child is killed
//! and the call fails) and the last [`STDERR_TAIL`] bytes of stderr, and runs the child in a
//! process group of its own. When the call ends — the child exited, the time ran out, the
//! output overflowed, or the future was dropped — the whole group is killed with `SIGKILL`,
//! so a background process the program left behind (`sleep 60 &`) does not survive it and
//! cannot keep its stdout open.

use std::ffi::{OsStr, OsString};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Default cap on what a child may print on stdout in one call: 32 MiB (the providers' cap on
/// response bodies).
pub const DEFAULT_MAX_OUTPUT: usize = 32 * 1024 * 1024;

/// How much of a child's stderr is kept (the end of it), for error messages: 64 KiB.
pub const STDERR_TAIL: usize = 64 * 1024;

/// Variables a child always gets from this process's environment (when set) unless it
/// inherits everything: `PATH`, `HOME`, and the locale (`LANG`, `LANGUAGE`, `LC_*`).
pub const BASE_ENV: &[&str] = &["PATH", "HOME", "LANG", "LANGUAGE"];

/// The environment of a child process.
///
/// By default a child gets only [`BASE_ENV`] and the `LC_*` variables from this process,
/// then the variables named with [`pass`](Self::pass) (copied when set here), then those set
/// with [`set`](Self::set). API keys and other secrets in this process's environment are not
/// passed unless listed. [`inherit_all`](Self::inherit_all) gives the child this process's
/// whole environment (the reference's behaviour), still with the `set` values on top.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildEnv {
    inherit_all: bool,
    pass: Vec<OsString>,
    set: Vec<(OsString, OsString)>,
}

impl ChildEnv {
    /// Only [`BASE_ENV`] and `LC_*` (the default).
    pub fn new() -> Self {
        Self::default()
    }

    /// The whole environment of this process, inherited (opt-in: every secret in it reaches
    /// the child).
    pub fn inherit_all() -> Self {
        Self {
            inherit_all: true,
            ..Self::default()
        }
    }

    /// This environment, but inheriting this process's whole environment under what
    /// [`set`](Self::set) gives.
    pub fn inheriting_all(mut self) -> Self {
        self.inherit_all = true;
        self
    }

    /// Whether the child inherits the whole environment.
    pub fn inherits_all(&self) -> bool {
        self.inherit_all
    }

    /// Also copies `name` from this process's environment, when it is set.
    pub fn pass(mut self, name: impl Into<OsString>) -> Self {
        self.pass.push(name.into());
        self
    }

    /// Sets `name` to `value` in the child's environment.
    pub fn set(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.set.push((name.into(), value.into()));
        self
    }

    /// The variables passed by [`pass`](Self::pass).
    pub fn passed(&self) -> impl Iterator<Item = &OsStr> {
        self.pass.iter().map(OsString::as_os_str)
    }

    /// The variables the child gets, from the given parent environment (`None`: the whole
    /// parent environment is inherited, then [`set`](Self::set) values are applied on top).
    pub fn resolve_from<I>(&self, parent: I) -> Vec<(OsString, OsString)>
    where
        I: IntoIterator<Item = (OsString, OsString)>,
    {
        let mut out: Vec<(OsString, OsString)> = parent
            .into_iter()
            .filter(|(name, _)| self.inherit_all || self.allows(name))
            .collect();
        for (name, value) in &self.set {
            out.retain(|(n, _)| n != name);
            out.push((name.clone(), value.clone()));
        }
        out
    }

    fn allows(&self, name: &OsStr) -> bool {
        let text = name.to_string_lossy();
        BASE_ENV.contains(&text.as_ref())
            || text.starts_with("LC_")
            || self.pass.iter().any(|p| p == name)
    }

    /// Applies this environment to a command (clearing what it would otherwise inherit).
    pub fn apply_std(&self, command: &mut std::process::Command) {
        command.env_clear();
        command.envs(self.resolve_from(std::env::vars_os()));
    }

    /// [`apply_std`](Self::apply_std) for a tokio command.
    pub fn apply_tokio(&self, command: &mut tokio::process::Command) {
        command.env_clear();
        command.envs(self.resolve_from(std::env::vars_os()));
    }
}

/// The limits of one call to a child program.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    /// The whole call, from start to the last byte of output.
    pub timeout: Duration,
    /// Most bytes of stdout.
    pub max_output: usize,
}

/// What a finished call produced.
#[derive(Debug)]
pub(crate) struct CallOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// The last [`STDERR_TAIL`] bytes of stderr.
    pub stderr: Vec<u8>,
}

/// Why a call produced no output.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The program could not be started.
    #[error("cannot start it: {0}")]
    Start(std::io::Error),
    /// Reading or waiting failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// The time ran out; the process group was killed.
    #[error("it did not finish within {0:?} and was killed")]
    Timeout(Duration),
    /// Stdout passed the cap; the process group was killed.
    #[error("it printed more than {0} bytes on stdout and was killed")]
    TooMuchOutput(usize),
}

/// Kills a process group when dropped (or when told to).
pub(crate) struct GroupKiller {
    #[cfg(unix)]
    group: Option<rustix::process::Pid>,
}

impl GroupKiller {
    fn of(child: &tokio::process::Child) -> Self {
        Self::of_leader(child.id())
    }

    /// The group led by process `pid` (started with `process_group(0)`); `None`: nothing to
    /// kill.
    pub(crate) fn of_leader(pid: Option<u32>) -> Self {
        #[cfg(unix)]
        {
            let group = pid
                .and_then(|id| i32::try_from(id).ok())
                .and_then(rustix::process::Pid::from_raw);
            Self { group }
        }
        #[cfg(not(unix))]
        {
            let _ = pid;
            Self {}
        }
    }

    /// Sends `SIGKILL` to every process of the group.
    pub(crate) fn kill(&self) {
        #[cfg(unix)]
        if let Some(group) = self.group {
            // ESRCH (the group is gone already) is the usual, harmless outcome.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` once: `input` on stdin, stdout and stderr drained concurrently, within
/// `limits`, in a process group of its own that is killed when the call ends (see the
/// [module docs](self)). The command's stdio and process group are set here.
pub(crate) async fn run_bounded(
    command: tokio::process::Command,
    input: Vec<u8>,
    limits: CallLimits,
) -> Result<CallOutput, CallError> {
    run_bounded_with(command, input, limits, None).await
}

/// [`run_bounded`], with the event lines of the child's stderr (those that start with the
/// token of `events`) handed to `events` instead of kept with the rest of stderr.
pub(crate) async fn run_bounded_with(
    mut command: tokio::process::Command,
    input: Vec<u8>,
    limits: CallLimits,
    events: Option<&mut StderrEvents>,
) -> Result<CallOutput, CallError> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let mut child = command.spawn().map_err(CallError::Start)?;
    let group = GroupKiller::of(&child);
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let write = async move {
        if let Some(mut stdin) = stdin {
            // A program that exits without reading all its input closes the pipe: not an
            // error here (its exit status and output tell what happened).
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        }
        Ok::<(), CallError>(())
    };
    let read_out = async move {
        match stdout {
            Some(out) => read_capped(out, limits.max_output).await,
            None => Ok(Vec::new()),
        }
    };
    let read_err = async move {
        match (stderr, events) {
            (Some(err), None) => Ok(read_tail(err, STDERR_TAIL).await),
            (Some(err), Some(events)) => Ok(read_stderr_events(err, STDERR_TAIL, events).await),
            (None, _) => Ok(Vec::new()),
        }
    };
    let group_ref = &group;
    let wait = async {
        let status = child.wait().await.map_err(CallError::Io)?;
        // Whatever the program left running in its group goes with it, which also closes
        // the pipes a background process kept open.
        group_ref.kill();
        Ok::<_, CallError>(status)
    };
    let all = async { tokio::try_join!(write, read_out, read_err, wait) };
    match tokio::time::timeout(limits.timeout, all).await {
        Ok(Ok(((), stdout, stderr, status))) => Ok(CallOutput {
            status,
            stdout,
            stderr,
        }),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(CallError::Timeout(limits.timeout)),
    }
    // `group` (killing the group) and `child` (kill_on_drop) are dropped here.
}

/// Reads `reader` to the end; more than `limit` bytes is [`CallError::TooMuchOutput`].
async fn read_capped<R: AsyncRead + Unpin>(reader: R, limit: usize) -> Result<Vec<u8>, CallError> {
    let mut bytes = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut bytes)
        .await
        .map_err(CallError::Io)?;
    if bytes.len() > limit {
        return Err(CallError::TooMuchOutput(limit));
    }
    Ok(bytes)
}

/// Reads `reader` to the end, keeping only its last `keep` bytes (a read error ends it).
async fn read_tail<R: AsyncRead + Unpin>(reader: R, keep: usize) -> Vec<u8> {
    let mut tail = Vec::new();
    read_tail_into(reader, keep, |chunk| {
        tail.extend_from_slice(chunk);
        if tail.len() > 2 * keep {
            tail.drain(..tail.len() - keep);
        }
    })
    .await;
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    tail
}

/// Where the event lines of a child's stderr go.
#[cfg(feature = "cli")]
pub(crate) type StderrEvents = crate::events::wire::ChildEvents;
/// Where the event lines of a child's stderr go (none without the `cli` feature).
#[cfg(not(feature = "cli"))]
pub(crate) enum StderrEvents {}

#[cfg(not(feature = "cli"))]
impl StderrEvents {
    fn token(&self) -> &str {
        match *self {}
    }
    async fn line(&mut self, _line: &[u8]) {
        match *self {}
    }
    fn oversized(&mut self) {
        match *self {}
    }
    fn finish(&self) {
        match *self {}
    }
}

/// Where the current line of a child's stderr stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LineKind {
    /// Too short yet to tell whether it starts with the token.
    Undecided,
    /// An event line, collected (at most [`wire::MAX_LINE`] bytes).
    Event,
    /// An event line past the limit: the rest of it is skipped.
    Oversized,
    /// Any other line: goes to the tail as it comes.
    Other,
}

/// [`read_tail`], but lines that start with `events`' token and a space are event lines,
/// handed to `events` one by one (each at most `wire::MAX_LINE` bytes; a longer one is
/// dropped) rather than kept in the tail.
async fn read_stderr_events<R: AsyncRead + Unpin>(
    mut reader: R,
    keep: usize,
    events: &mut StderrEvents,
) -> Vec<u8> {
    #[cfg(feature = "cli")]
    let max_line = crate::events::wire::MAX_LINE;
    #[cfg(not(feature = "cli"))]
    let max_line = 0;
    let prefix = format!("{} ", events.token()).into_bytes();
    let mut tail = Vec::new();
    let mut keep_tail = |bytes: &[u8]| {
        tail.extend_from_slice(bytes);
        if tail.len() > 2 * keep {
            tail.drain(..tail.len() - keep);
        }
    };
    let mut chunk = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let mut kind = LineKind::Undecided;
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            let newline = rest.iter().position(|b| *b == b'\n');
            let (part, ended) = match newline {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = match newline {
                Some(i) => &rest[i + 1..],
                None => &[],
            };
            if kind == LineKind::Undecided {
                line.extend_from_slice(part);
                if line.len() >= prefix.len() || ended {
                    if line.starts_with(&prefix) {
                        kind = LineKind::Event;
                        line.drain(..prefix.len());
                    } else {
                        kind = LineKind::Other;
                        keep_tail(&line);
                        line.clear();
                    }
                }
            } else if kind == LineKind::Event {
                line.extend_from_slice(part);
            } else if kind == LineKind::Other {
                keep_tail(part);
            }
            if kind == LineKind::Event && line.len() > max_line {
                kind = LineKind::Oversized;
                line = Vec::new();
            }
            if ended {
                match kind {
                    LineKind::Event => events.line(&line).await,
                    LineKind::Oversized => events.oversized(),
                    LineKind::Other | LineKind::Undecided => keep_tail(b"\n"),
                }
                line.clear();
                kind = LineKind::Undecided;
            }
        }
    }
    // A last line without its newline.
    match kind {
        LineKind::Event => events.line(&line).await,
        LineKind::Oversized => events.oversized(),
        LineKind::Undecided => keep_tail(&line),
        LineKind::Other => {}
    }
    events.finish();
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    tail
}

/// Reads `reader` to the end in chunks of at most `keep` bytes, handing each to `take` (a
/// read error ends it): a long-running child's stderr is read this way, so memory stays
/// bounded however much it prints and however long its lines are.
pub(crate) async fn read_tail_into<R: AsyncRead + Unpin>(
    mut reader: R,
    keep: usize,
    mut take: impl FnMut(&[u8]),
) {
    let mut chunk = vec![0u8; keep.clamp(1, 16 * 1024)];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => take(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn default_env_keeps_only_path_home_and_locale() {
        let parent = vars(&[
            ("PATH", "/bin"),
            ("HOME", "/h"),
            ("LC_ALL", "C"),
            ("OPENAI_API_KEY", "sk-secret"),
            ("X", "1"),
        ]);
        let env = ChildEnv::new().pass("X").set("Y", "2");
        let got = env.resolve_from(parent.clone());
        assert_eq!(
            got,
            vars(&[
                ("PATH", "/bin"),
                ("HOME", "/h"),
                ("LC_ALL", "C"),
                ("X", "1"),
                ("Y", "2")
            ])
        );
        let all = ChildEnv::inherit_all().set("X", "3").resolve_from(parent);
        assert!(all.contains(&(
            OsString::from("OPENAI_API_KEY"),
            OsString::from("sk-secret")
        )));
        assert!(all.contains(&(OsString::from("X"), OsString::from("3"))));
    }
}
