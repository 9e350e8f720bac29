//! A command line for any application binary that embeds machines: the equivalent of the
//! reference's `python -m flatmachines.run` (feature `cli`).
//!
//! ```no_run
//! // In the app's `main`, with the builder of its root machine
//! // (`Machine::of::<my_machine::Machine>().action_mut(..)`):
//! fn app_main(builder: flatmachine_runtime::MachineBuilder) -> std::process::ExitCode {
//!     flatmachine_runtime::cli::main(builder)
//! }
//! ```
//!
//! ```text
//! app run [--input JSON|@file|-] [--execution-id ID] [--parent-id ID] [--machine CHILD] [--max-steps N] [--max-agent-calls N]
//! app resume ID [--machine CHILD] [--max-agent-calls N] [--allow-fingerprint-change]
//! app inspect [ID] [--json] [--tree]
//! app signal send CHANNEL --data JSON|@file [--ttl SECONDS | --keep]
//! app waiting [--json]
//! app dispatch [--once] [--poll-ms N] [--allow-fingerprint-change]
//! app fork ID [--step N] [--event EVENT] [--set KEY=JSON]... [--id NEW_ID] [--allow-fingerprint-change]
//! app ui [--port N] [--bind ADDR] [--allow-remote] [--dispatch]
//! app pool list | pool jobs POOL | pool requeue POOL … | pool drop-poisoned POOL …
//! app workers list | workers remove …
//! app stats | app prune
//! ```
//!
//! A run that stops in a `wait_for` state is not a failure: it prints `null` on stdout, says
//! on stderr what it waits for, and its statistics line has `"status": "waiting"` and the
//! `channel` (exit status 0). `signal send` stores a signal on the machine's signal backend
//! (`settings.backends.signal`); `dispatch --once` delivers signals and resumes the runs they
//! wake (one round; without `--once` it keeps going until Ctrl-C); `waiting` lists the waiting
//! runs; `fork` starts a new execution from a checkpoint of another one and runs it (see
//! `docs/signals.md`).
//!
//! The contract (what [`SubprocessInvoker`] relies on): the run's output is printed to stdout
//! as JSON and the exit status is 0; on failure the error goes to stderr as `error: ...` and
//! the exit status is 1 (2 for a usage error). One line of statistics (`{"execution_id",
//! "final_state", "steps", "total_api_calls", "total_cost"}`) goes to stderr after a
//! successful run, and after a run that failed once started (`"error_type"` instead of
//! `"final_state"`). `--machine CHILD` runs the child machine named `CHILD` (its name in
//! some `machines:`, searched breadth-first through the tree) with the root's configuration
//! instead of the root machine; `resume ID` without it resumes with the machine the
//! checkpoints name when the root or one of its children is that machine. `inspect` prints
//! an execution's history (or, without an id, the executions) from the checkpoint store the
//! machine is configured with — whatever its backend — see [`crate::inspect`]; `--tree`
//! prints run trees instead (see [`crate::run_tree`]). The operator commands (`pool`,
//! `workers`, `stats`, `prune`) work on the pools, registry and checkpoints the machine's YAML
//! names — see [`crate::distributed::admin::command`]. When `FLATMACHINE_EVENT_STREAM` is set
//! (by a [`SubprocessInvoker`] whose parent run is streamed), `run` and `resume` also write the
//! run's events on stderr, one line each starting with that variable's value.

use std::process::ExitCode;

use async_trait::async_trait;
use clap::{Parser, Subcommand};

use crate::cli_signals;
use crate::engine::{InvokeRequest, MachineInvoker};
use crate::process::{CallError, CallLimits, ChildEnv, run_bounded_with};
use crate::{
    Machine, MachineBuilder, RunFailure, RunOptions, RunResult, StateError, Value, error_type,
};

#[derive(Debug, Parser)]
#[command(about = "Run or resume a compiled FlatMachine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the machine (or one of its child machines) with an input.
    Run {
        /// The input: a JSON object, `@path` to read it from a file, or `-` to read it from
        /// stdin.
        #[arg(long, short = 'i', default_value = "{}")]
        input: String,
        /// Use this execution id (default: a new UUID).
        #[arg(long, short = 'e')]
        execution_id: Option<String>,
        /// The parent's execution id (lineage, written into the checkpoints).
        #[arg(long, short = 'p')]
        parent_id: Option<String>,
        /// Run this child machine (a name in some `machines:` of the tree) instead of the root.
        #[arg(long, short = 'm')]
        machine: Option<String>,
        /// Most state visits.
        #[arg(long)]
        max_steps: Option<u64>,
        /// Most agent calls in the run tree (this run and its children).
        #[arg(long)]
        max_agent_calls: Option<u64>,
    },
    /// Continue an execution from its latest checkpoint.
    Resume {
        /// The execution id.
        id: String,
        /// The execution is a run of this child machine (default: the machine its checkpoints
        /// name, found among the root and its children).
        #[arg(long, short = 'm')]
        machine: Option<String>,
        /// Most agent calls in the rest of the run tree, the calls recorded before included.
        #[arg(long)]
        max_agent_calls: Option<u64>,
        /// Continue a checkpoint written by a build of another shape.
        #[arg(long)]
        allow_fingerprint_change: bool,
    },
    /// Signals for runs waiting in `wait_for` states.
    Signal {
        #[command(subcommand)]
        command: SignalCommand,
    },
    /// List the runs waiting for a signal.
    Waiting {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Deliver signals to waiting runs and resume them (until Ctrl-C, or one round with --once).
    Dispatch {
        /// One round, then exit (prints what it did as JSON).
        #[arg(long)]
        once: bool,
        /// Longest pause between rounds, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        poll_ms: u64,
        /// Resume checkpoints written by a build of another shape.
        #[arg(long)]
        allow_fingerprint_change: bool,
    },
    /// Start a new execution from a checkpoint of another one, and run it.
    Fork {
        /// The execution to fork.
        id: String,
        /// Fork from this step (default: the latest checkpoint).
        #[arg(long)]
        step: Option<u64>,
        /// Which checkpoint of the step (default: its first).
        #[arg(long)]
        event: Option<String>,
        /// Change the fork's context: KEY=JSON (a dotted key reaches into maps); repeatable.
        #[arg(long = "set", value_name = "KEY=JSON")]
        set: Vec<String>,
        /// The fork's execution id (default: a new UUID).
        #[arg(long = "id")]
        new_id: Option<String>,
        /// Fork a checkpoint written by a build of another shape.
        #[arg(long)]
        allow_fingerprint_change: bool,
        /// Only make the fork; do not run it.
        #[arg(long)]
        no_run: bool,
    },
    /// Print an execution's history from its checkpoints (without an id: list executions).
    Inspect {
        /// The execution id.
        id: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Print the run tree (the execution and its children, or every tree): where each
        /// run stands and whether anything will resume it.
        #[arg(long)]
        tree: bool,
    },
    /// Serve the console: a local web UI over the machine's checkpoints (runs, graphs,
    /// timelines, prompts and replies, live updates, signals for waiting runs).
    Ui {
        /// The port (0: any free one).
        #[arg(long, default_value_t = crate::console::DEFAULT_PORT)]
        port: u16,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Listen on an address that is not a loopback one (the console has no login).
        #[arg(long)]
        allow_remote: bool,
        /// Also deliver signals and resume the runs they wake (as `dispatch` does).
        #[arg(long)]
        dispatch: bool,
    },
    /// Operator commands for distributed workers (pools, workers, stats, retention), on the
    /// stores the machine's YAML names.
    #[command(flatten)]
    Admin(crate::distributed::admin::command::AdminCommand),
}

#[derive(Debug, Subcommand)]
enum SignalCommand {
    /// Send a signal on CHANNEL (kept until a run takes it, or its time to live passes).
    Send {
        /// The channel (what a `wait_for` state renders, e.g. `approval/42`).
        channel: String,
        /// The signal's data: JSON, or `@path` to read it from a file.
        #[arg(long, short = 'd', default_value = "null")]
        data: String,
        /// Drop the signal if no run took it within this many seconds (default: 7 days).
        #[arg(long, conflicts_with = "keep")]
        ttl: Option<f64>,
        /// Keep the signal until a run takes it.
        #[arg(long)]
        keep: bool,
    },
}

/// What a command produced.
enum Outcome {
    /// A run or resume finished.
    Ran(Box<RunResult>),
    /// Text to print as it is.
    Text(String),
}

/// Parses the process arguments and runs the command on a new tokio runtime; see the
/// [module docs](self) for the contract.
pub fn main(builder: MachineBuilder) -> ExitCode {
    main_from(builder, std::env::args_os())
}

/// [`main`] with explicit arguments (the first is the program name).
pub fn main_from<I, T>(builder: MachineBuilder, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // Logging from RUST_LOG / FLATAGENTS_LOG_* (see `crate::logging`); an app that installed
    // its own subscriber keeps it.
    match crate::logging::init() {
        Ok(_) | Err(crate::logging::LoggingError::AlreadySet) => {}
        Err(e) => eprintln!("warning: {e}; logging is off"),
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(builder, cli.command)) {
        Ok(Outcome::Text(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Ran(result)) => {
            match serde_json::to_string_pretty(&result.output) {
                Ok(text) => println!("{text}"),
                Err(e) => {
                    eprintln!("error: cannot print the output: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let mut stats = serde_json::json!({
                "execution_id": result.execution_id,
                "final_state": result.final_state,
                "steps": result.steps,
                "total_api_calls": result.total_api_calls,
                "total_cost": result.total_cost,
            });
            if let Some(w) = result.waiting() {
                eprintln!(
                    "waiting: execution {} waits for a signal on `{}` in state `{}`{}; send one with `signal send {} --data JSON`, then run `dispatch --once`",
                    result.execution_id,
                    w.channel,
                    w.state,
                    w.deadline
                        .as_deref()
                        .map(|d| format!(" until {d}"))
                        .unwrap_or_default(),
                    w.channel,
                );
                stats["status"] = "waiting".into();
                stats["channel"] = w.channel.clone().into();
                if let Some(child) = &w.child {
                    stats["waiting_child"] = child.clone().into();
                }
            }
            eprintln!("{stats}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            // Error texts can carry a model's or a program's output: no raw control characters
            // on the terminal.
            eprintln!(
                "error: {}",
                crate::inspect::escape_controls(&failure.message)
            );
            if let Some(stats) = failure.stats {
                eprintln!("{stats}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed: the message, and for a run that got going, its statistics line
/// (`{"execution_id", "error_type", "steps", "total_api_calls", "total_cost"}`).
struct Failure {
    message: String,
    stats: Option<Value>,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            message,
            stats: None,
        }
    }
}

impl From<Box<RunFailure>> for Failure {
    fn from(failure: Box<RunFailure>) -> Self {
        let stats = failure.context.is_some().then(|| {
            serde_json::json!({
                "execution_id": failure.execution_id,
                "error_type": failure.error.to_state_error().error_type,
                "steps": failure.steps,
                "total_api_calls": failure.totals.api_calls,
                "total_cost": failure.totals.cost,
            })
        });
        Self {
            message: failure.error.to_string(),
            stats,
        }
    }
}

async fn execute(builder: MachineBuilder, command: Command) -> Result<Outcome, Failure> {
    let root = builder.build().map_err(|e| e.to_string())?;
    let pick = |name: &Option<String>| -> Result<Machine, String> {
        match name {
            None => Ok(root.clone()),
            Some(n) => find_child(&root, n).ok_or_else(|| {
                format!("machine `{}` has no child machine `{n}`", root.spec().name)
            }),
        }
    };
    let result = match command {
        Command::Run {
            input,
            execution_id,
            parent_id,
            machine,
            max_steps,
            max_agent_calls,
        } => {
            let machine = pick(&machine)?;
            let input = read_input(&input)?;
            let mut options = RunOptions::new();
            if let Some(id) = execution_id {
                options = options.execution_id(id);
            }
            if let Some(p) = parent_id {
                options = options.parent_execution_id(p);
            }
            if let Some(n) = max_steps {
                options = options.max_steps(n);
            }
            if let Some(n) = max_agent_calls {
                options = options.max_agent_calls(n);
            }
            let result = watch(&machine, input, options).await;
            join(&machine).await;
            result
        }
        Command::Resume {
            id,
            machine,
            max_agent_calls,
            allow_fingerprint_change,
        } => {
            let machine = pick(&machine)?;
            let mut options = RunOptions::new()
                .resume_from(id)
                .allow_fingerprint_change(allow_fingerprint_change);
            if let Some(n) = max_agent_calls {
                options = options.max_agent_calls(n);
            }
            let result = watch(&machine, Value::Null, options).await;
            join(&machine).await;
            result
        }
        Command::Inspect { id, json, tree } => {
            return inspect(&root, id.as_deref(), json, tree)
                .await
                .map_err(Failure::from);
        }
        Command::Signal {
            command:
                SignalCommand::Send {
                    channel,
                    data,
                    ttl,
                    keep,
                },
        } => {
            return cli_signals::send(&root, &channel, &data, ttl, keep)
                .await
                .map(Outcome::Text)
                .map_err(Failure::from);
        }
        Command::Waiting { json } => {
            return cli_signals::waiting(&root, json)
                .await
                .map(Outcome::Text)
                .map_err(Failure::from);
        }
        Command::Dispatch {
            once,
            poll_ms,
            allow_fingerprint_change,
        } => {
            let text = cli_signals::dispatch(&root, once, poll_ms, allow_fingerprint_change).await;
            join(&root).await;
            return text.map(Outcome::Text).map_err(Failure::from);
        }
        Command::Fork {
            id,
            step,
            event,
            set,
            new_id,
            allow_fingerprint_change,
            no_run,
        } => {
            let options =
                cli_signals::fork_options(step, event, &set, new_id, allow_fingerprint_change)?;
            if no_run {
                let fork = root.fork(&id, options).await.map_err(|e| e.to_string())?;
                return Ok(Outcome::Text(format!(
                    "{}\n",
                    serde_json::json!({
                        "execution_id": fork.execution_id,
                        "forked_from": fork.from,
                        "state": fork.state,
                        "event": fork.event,
                    })
                )));
            }
            let ran = root.fork_and_run(&id, options).await;
            join(&root).await;
            let (fork, result) = ran.map_err(|e| e.to_string())?;
            eprintln!(
                "forked execution {} from {} at step {}",
                fork.execution_id, fork.from.execution_id, fork.from.step
            );
            Ok(result)
        }
        Command::Ui {
            port,
            bind,
            allow_remote,
            dispatch,
        } => {
            let text = crate::cli_ui::ui(&root, bind, port, allow_remote, dispatch).await;
            join(&root).await;
            return text.map(Outcome::Text).map_err(Failure::from);
        }
        Command::Admin(command) => return admin(&root, command).await.map_err(Failure::from),
    };
    result
        .map(|r| Outcome::Ran(Box::new(r)))
        .map_err(Failure::from)
}

/// Runs `machine`, watched when someone looks: progress bars for `foreach` states when stderr
/// is a terminal, and (feature `otel`) spans and metrics when an OTLP endpoint is set.
async fn watch(
    machine: &Machine,
    input: Value,
    options: RunOptions,
) -> Result<RunResult, Box<RunFailure>> {
    let mut progress = crate::progress::ForeachProgress::for_terminal();
    #[cfg(feature = "otel")]
    let telemetry = telemetry_from_env();
    #[cfg(not(feature = "otel"))]
    let telemetry: Option<()> = None;
    // A parent process that runs this one as its child machine and streams its own run asks
    // for the events on stderr (`SubprocessInvoker`).
    let mut parent = crate::events::wire::ParentPipe::from_env();
    if progress.is_none() && telemetry.is_none() && parent.is_none() {
        return machine.execute(input, options).await;
    }
    let mut stream = machine.stream(input, options);
    while let Some(event) = futures::StreamExt::next(&mut stream).await {
        if let Some(p) = &mut progress {
            p.record(&event);
        }
        #[cfg(feature = "otel")]
        if let Some(t) = &telemetry {
            t.record(&event);
        }
        if let Some(pipe) = &mut parent {
            pipe.push(&event);
            // Whatever else is queued goes in the same write.
            while pipe.pending() < 64 * 1024 {
                let Some(Some(next)) =
                    futures::FutureExt::now_or_never(futures::StreamExt::next(&mut stream))
                else {
                    break;
                };
                if let Some(p) = &mut progress {
                    p.record(&next);
                }
                #[cfg(feature = "otel")]
                if let Some(t) = &telemetry {
                    t.record(&next);
                }
                pipe.push(&next);
            }
            if !pipe.flush() {
                // The parent stopped reading: the run goes on without sending.
                parent = None;
            }
        }
    }
    let result = stream.result().await;
    #[cfg(feature = "otel")]
    if let Some(t) = telemetry {
        let flushed = tokio::task::spawn_blocking(move || t.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            eprintln!("warning: {e}");
        }
    }
    result
}

/// Telemetry when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces one) is set.
#[cfg(feature = "otel")]
fn telemetry_from_env() -> Option<crate::otel::Telemetry> {
    let set = |v: &str| std::env::var(v).is_ok_and(|s| !s.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return None;
    }
    match crate::otel::Telemetry::from_env() {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("warning: {e}; the run is not traced");
            None
        }
    }
}

async fn inspect(
    root: &Machine,
    id: Option<&str>,
    json: bool,
    tree: bool,
) -> Result<Outcome, String> {
    let store = root.store().ok_or_else(|| {
        format!(
            "machine `{}` runs without checkpoints: nothing to inspect",
            root.spec().name
        )
    })?;
    if tree {
        return crate::run_tree::report(store, id, json)
            .await
            .map(Outcome::Text)
            .map_err(|e| e.to_string());
    }
    crate::inspect::report(store, id, json)
        .await
        .map(Outcome::Text)
        .map_err(|e| e.to_string())
}

/// An operator command, on the stores of the machine's YAML (the worker machine's, when the
/// root has one among its children) unless `--store` names others.
async fn admin(
    root: &Machine,
    command: crate::distributed::admin::command::AdminCommand,
) -> Result<Outcome, String> {
    let spec = crate::distributed::worker_machine_of(root.spec());
    let defaults = crate::distributed::admin::AdminTarget {
        backends: crate::distributed::Backends::for_machine(spec).ok(),
        checkpoints: root.store().cloned(),
    };
    crate::distributed::admin::command::run(command, &defaults)
        .await
        .map(Outcome::Text)
}

/// Launched children finish before the process exits.
async fn join(machine: &Machine) {
    for launched in machine.join_launched().await {
        if let Err(e) = launched.result {
            eprintln!(
                "warning: launched machine `{}` ({}) failed: {e}",
                launched.machine, launched.execution_id
            );
        }
    }
}

fn read_input(arg: &str) -> Result<Value, String> {
    let text = if arg == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| format!("cannot read the input from stdin: {e}"))?;
        text
    } else {
        match arg.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the input file `{path}`: {e}"))?,
            None => arg.to_string(),
        }
    };
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("the input is not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err("the input must be a JSON object".into());
    }
    Ok(value)
}

/// The child machine `name` anywhere in the tree below `root` (breadth-first).
fn find_child(root: &Machine, name: &str) -> Option<Machine> {
    let mut queue = vec![root.clone()];
    let mut seen: Vec<*const crate::MachineSpec> = Vec::new();
    let mut i = 0;
    while let Some(m) = queue.get(i).cloned() {
        i += 1;
        if let Some(child) = m.child_machine(name) {
            return Some(child);
        }
        seen.push(m.spec() as *const _);
        for (n, spec) in m.spec().machines {
            if let Some(spec) = spec
                && !seen.contains(&(*spec as *const _))
                && let Some(c) = m.child_machine(n)
            {
                queue.push(c);
            }
        }
    }
    None
}

/// Runs each child machine as a separate OS process through an application binary that calls
/// [`main`] (`program run --machine <child> --execution-id <id> --parent-id <parent> --input
/// -`, the input written as JSON on the child's stdin, or `program resume <id> --machine
/// <child>`), reading the output from its stdout.
///
/// The input travels on stdin, never on the command line: it has no size limit there and
/// does not show in `ps` or `/proc/<pid>/cmdline`. Each call has its own limits, like a
/// subprocess agent's (see `docs/security.md`): a timeout (default 1 hour,
/// [`with_timeout`](Self::with_timeout); the process group is killed and the state fails
/// with a `TimeoutError`), a cap on stdout (default 32 MiB,
/// [`with_max_output`](Self::with_max_output)), and the child's process group killed when the
/// call ends. The child inherits this process's environment (it is the same application,
/// which needs the same keys); [`with_env`](Self::with_env) narrows it.
///
/// The child process builds its machine from the same code, so it shares nothing in memory
/// with the parent: give both the same on-disk checkpoint directory (`backend: local`) for
/// lineage and resume, and a shared result backend if children exchange results. The child's
/// agent calls, cost and steps are read from its statistics line and added to the parent's
/// totals (tokens are not). A limited run tree passes its remaining calls on
/// (`--max-agent-calls`) and counts what the child reports; children running at the same
/// time each get the whole remainder, so together they can pass the limit by what they make
/// concurrently. Child machine names must be unique within the tree.
///
/// When the parent's run is streamed ([`Machine::stream`]), the child is asked for its events
/// (a token in `FLATMACHINE_EVENT_STREAM`), writes them as lines on stderr, and the invoker
/// re-emits them on the parent's stream, checked and bounded as untrusted input (see
/// `docs/observability.md`, "Children in other processes").
#[derive(Debug, Clone)]
pub struct SubprocessInvoker {
    program: std::path::PathBuf,
    args: Vec<String>,
    timeout: std::time::Duration,
    max_output: usize,
    env: ChildEnv,
}

impl SubprocessInvoker {
    /// The default time a child machine may run: 1 hour.
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

    /// Runs children with `program` (e.g. `std::env::current_exe()`), placing `args` before the
    /// CLI's own arguments.
    pub fn new(program: impl Into<std::path::PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            timeout: Self::DEFAULT_TIMEOUT,
            max_output: crate::process::DEFAULT_MAX_OUTPUT,
            env: ChildEnv::inherit_all(),
        }
    }

    /// Arguments placed before the subcommand (for apps that dispatch on a first argument).
    pub fn with_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Kills a child machine's process (group) after this long (default 1 hour).
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Most bytes a child may print on stdout (default 32 MiB).
    pub fn with_max_output(mut self, bytes: usize) -> Self {
        self.max_output = bytes;
        self
    }

    /// The children's environment (default: this process's, [`ChildEnv::inherit_all`]).
    pub fn with_env(mut self, env: ChildEnv) -> Self {
        self.env = env;
        self
    }
}

#[async_trait]
impl MachineInvoker for SubprocessInvoker {
    async fn invoke(&self, request: InvokeRequest) -> Result<RunResult, StateError> {
        let mut command = tokio::process::Command::new(&self.program);
        command.args(&self.args);
        let remaining = request.agent_calls.remaining().map(|n| n.to_string());
        let input = if request.resume {
            command.args([
                "resume",
                request.execution_id.as_str(),
                "--machine",
                request.machine,
            ]);
            Vec::new()
        } else {
            let input = serde_json::to_vec(&request.input).map_err(|e| {
                StateError::new(error_type::MACHINE, format!("cannot encode the input: {e}"))
            })?;
            command.args([
                "run",
                "--machine",
                request.machine,
                "--execution-id",
                request.execution_id.as_str(),
                "--input",
                "-",
            ]);
            if let Some(parent) = &request.parent_execution_id {
                command.args(["--parent-id", parent.as_str()]);
            }
            input
        };
        if let Some(n) = &remaining {
            command.args(["--max-agent-calls", n.as_str()]);
        }
        self.env.apply_tokio(&mut command);
        // When the parent's run is streamed, the child sends its events (see
        // `events::wire`); a token inherited from further up is never passed on.
        command.env_remove(crate::events::wire::ENV);
        let mut events = crate::events::RunEvents::current()
            .filter(|e| e.is_listening())
            .and_then(|target| {
                crate::events::wire::ChildEvents::new(
                    target,
                    crate::events::wire::new_token(),
                    request.parent.spec(),
                    request.machine,
                    &request.execution_id,
                    request.parent_execution_id.as_deref(),
                )
            });
        if let Some(e) = &events {
            command.env(crate::events::wire::ENV, e.token());
        }
        let limits = CallLimits {
            timeout: self.timeout,
            max_output: self.max_output,
        };
        let out = match run_bounded_with(command, input, limits, events.as_mut()).await {
            Ok(out) => out,
            Err(CallError::Timeout(limit)) => {
                return Err(StateError::new(
                    error_type::TIMEOUT,
                    format!(
                        "child machine `{}` did not finish within {limit:?} and was killed",
                        request.machine
                    ),
                ));
            }
            Err(error) => {
                return Err(StateError::new(
                    error_type::MACHINE,
                    format!(
                        "child machine `{}` (`{}`): {error}",
                        request.machine,
                        self.program.display()
                    ),
                ));
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The child's statistics line: its calls count against the tree's budget.
        let stats = stats_line(&stderr);
        let calls = stats
            .as_ref()
            .and_then(|s| s.get("total_api_calls"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let cost = stats
            .as_ref()
            .and_then(|s| s.get("total_cost"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        request.agent_calls.record(calls);
        if !out.status.success() {
            let message = stderr
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or(stderr.trim());
            // A limit of the run tree stays one in the parent.
            let kind = match stats
                .as_ref()
                .and_then(|s| s.get("error_type"))
                .and_then(Value::as_str)
            {
                Some(t) if t == error_type::MAX_AGENT_CALLS => {
                    request.agent_calls.record_refusal();
                    error_type::MAX_AGENT_CALLS
                }
                _ => error_type::MACHINE,
            };
            return Err(StateError::new(
                kind,
                format!(
                    "child machine `{}` failed ({}): {message}",
                    request.machine, out.status
                ),
            ));
        }
        let output: Value = std::str::from_utf8(&out.stdout)
            .map_err(|e| e.to_string())
            .and_then(|text| crate::agents::output::parse_bounded(text).map_err(|e| e.to_string()))
            .map_err(|e| {
                StateError::new(
                    error_type::MACHINE,
                    format!(
                        "child machine `{}` printed no JSON output: {e}",
                        request.machine
                    ),
                )
            })?;
        // A child that waits for a signal says so in its statistics line (stderr).
        let stderr = String::from_utf8_lossy(&out.stderr);
        let waiting = stderr
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .find(|v| v.get("execution_id").is_some())
            .filter(|v| v.get("status").and_then(Value::as_str) == Some("waiting"));
        let status = match waiting {
            Some(stats) => crate::RunStatus::Waiting(crate::Waiting {
                channel: stats["channel"].as_str().unwrap_or_default().to_string(),
                state: stats["final_state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                deadline: None,
                child: stats["waiting_child"].as_str().map(str::to_string),
            }),
            None => crate::RunStatus::Finished,
        };
        Ok(RunResult {
            status,
            output,
            execution_id: request.execution_id,
            final_state: String::new(),
            steps: stats
                .as_ref()
                .and_then(|s| s.get("steps"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
            total_api_calls: calls,
            total_cost: cost,
            usage: Default::default(),
            context: Default::default(),
        })
    }
}

/// The last line of a child process's stderr that is a JSON object: the CLI's statistics line.
fn stats_line(stderr: &str) -> Option<Value> {
    stderr
        .lines()
        .rev()
        .filter(|l| l.starts_with('{'))
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statistics_line_is_the_last_json_object_on_stderr() {
        let stderr = "warning: something\n{\"execution_id\": \"a\", \"total_api_calls\": 1}\nerror: boom\n{\"execution_id\": \"b\", \"error_type\": \"MaxAgentCallsError\", \"total_api_calls\": 3}\n";
        let stats = stats_line(stderr).unwrap();
        assert_eq!(stats["execution_id"], "b");
        assert_eq!(stats["total_api_calls"], 3);
        assert!(stats_line("error: no stats\n{not json\n").is_none());
    }

    #[test]
    fn a_failure_before_the_run_started_has_no_statistics() {
        let early = RunFailure::early("x", crate::RunError::UnknownExecution("x".into()));
        let failure = Failure::from(early);
        assert!(failure.stats.is_none());
        assert_eq!(failure.message, "no checkpoint for execution `x`");
    }
}
