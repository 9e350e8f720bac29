//! Starting worker processes: the [`WorkerSpawner`] seam behind the `spawn_workers` action.

use async_trait::async_trait;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use super::DistributedError;
use crate::Value;
use crate::process::ChildEnv;

/// One worker to start.
#[derive(Debug, Clone, PartialEq)]
pub struct SpawnRequest {
    /// The id the new worker registers under (`worker-<8 hex>`).
    pub worker_id: String,
    /// The pool it drains.
    pub pool_id: String,
    /// `worker_config_path` from the checker's context, if set (the worker machine's YAML in the
    /// reference; compiled workers usually ignore it).
    pub worker_config_path: Option<String>,
    /// The worker machine's input: `{"pool_id": …, "worker_id": …}`.
    pub input: Value,
}

/// Starts worker machines as separate processes for `spawn_workers`. The call returns once the
/// worker is started (it does not wait for it to finish).
#[async_trait]
pub trait WorkerSpawner: Send + Sync {
    /// Starts one worker.
    async fn spawn(&self, request: &SpawnRequest) -> Result<(), DistributedError>;
}

/// Runs a command line per worker. Each argument may contain the placeholders `{worker_id}`,
/// `{pool_id}`, `{input}` (the input as JSON) and `{worker_config_path}` (empty when unset),
/// replaced per worker. With no arguments set, the arguments are `run --input {input}` — the
/// shape of a `flatmachine_runtime::cli` worker binary.
///
/// Children inherit stdout/stderr and get no stdin. They are kept so the owner can wait for or
/// kill them ([`CommandSpawner::wait_all`], [`CommandSpawner::kill_all`]).
///
/// Environment: a worker gets only `PATH`, `HOME` and the locale (`LANG`, `LANGUAGE`,
/// `LC_*`) from this process, plus the variables named with [`pass_env`](Self::pass_env)
/// (e.g. the API keys its agents need) and those set with [`env`](Self::env);
/// [`inherit_env`](Self::inherit_env) passes the whole environment. See [`ChildEnv`].
#[derive(Debug)]
pub struct CommandSpawner {
    program: PathBuf,
    args: Vec<String>,
    env: ChildEnv,
    children: Mutex<Vec<(String, Child)>>,
}

impl CommandSpawner {
    /// Runs `program` (see the type's docs for the default arguments).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: ChildEnv::new(),
            children: Mutex::new(Vec::new()),
        }
    }

    /// Replaces the argument templates.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets an environment variable for every child.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env = self.env.set(key, value);
        self
    }

    /// Copies the variable `key` from this process's environment to every child (when set).
    pub fn pass_env(mut self, key: impl Into<OsString>) -> Self {
        self.env = self.env.pass(key);
        self
    }

    /// Gives every child this process's whole environment (opt-in: every secret in it
    /// reaches the workers), with the [`env`](Self::env) values on top.
    pub fn inherit_env(mut self) -> Self {
        self.env = self.env.inheriting_all();
        self
    }

    /// The command line for `request` (program, then arguments).
    pub fn command_line(&self, request: &SpawnRequest) -> (PathBuf, Vec<String>) {
        let input = request.input.to_string();
        let config = request.worker_config_path.clone().unwrap_or_default();
        let templates: Vec<String> = if self.args.is_empty() {
            vec!["run".into(), "--input".into(), "{input}".into()]
        } else {
            self.args.clone()
        };
        let args = templates
            .iter()
            .map(|a| {
                a.replace("{worker_id}", &request.worker_id)
                    .replace("{pool_id}", &request.pool_id)
                    .replace("{worker_config_path}", &config)
                    .replace("{input}", &input)
            })
            .collect();
        (self.program.clone(), args)
    }

    /// Worker ids and process ids of the children still held.
    pub fn children(&self) -> Vec<(String, u32)> {
        self.lock()
            .iter()
            .map(|(id, c)| (id.clone(), c.id()))
            .collect()
    }

    /// Kills the child started for `worker_id` (SIGKILL on Unix); returns whether it was found.
    pub fn kill(&self, worker_id: &str) -> bool {
        let mut children = self.lock();
        match children.iter_mut().find(|(id, _)| id == worker_id) {
            Some((_, child)) => {
                let _ = child.kill();
                let _ = child.wait();
                true
            }
            None => false,
        }
    }

    /// Waits for every child started so far; returns (worker id, exit success) pairs.
    pub fn wait_all(&self) -> Vec<(String, bool)> {
        let children = std::mem::take(&mut *self.lock());
        children
            .into_iter()
            .map(|(id, mut c)| {
                let ok = c.wait().map(|s| s.success()).unwrap_or(false);
                (id, ok)
            })
            .collect()
    }

    /// Kills every child still running.
    pub fn kill_all(&self) {
        for (_, mut c) in std::mem::take(&mut *self.lock()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Forgets children that have exited; returns how many are still running.
    pub fn reap(&self) -> usize {
        let mut children = self.lock();
        children.retain_mut(|(_, c)| matches!(c.try_wait(), Ok(None)));
        children.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Child)>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl WorkerSpawner for CommandSpawner {
    async fn spawn(&self, request: &SpawnRequest) -> Result<(), DistributedError> {
        let (program, args) = self.command_line(request);
        let mut cmd = Command::new(&program);
        cmd.args(&args).stdin(Stdio::null());
        self.env.apply_std(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| DistributedError::Spawn(format!("{}: {e}", program.display())))?;
        tracing::info!(worker_id = %request.worker_id, pid = child.id(), "spawned worker");
        self.lock().push((request.worker_id.clone(), child));
        Ok(())
    }
}
