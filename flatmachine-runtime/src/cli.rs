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
//! app run [--input JSON|@file] [--execution-id ID] [--parent-id ID] [--machine CHILD] [--max-steps N]
//! app resume ID [--machine CHILD] [--allow-fingerprint-change]
//! app inspect [ID] [--json]
//! app signal send CHANNEL --data JSON|@file [--ttl SECONDS | --keep]
//! app waiting [--json]
//! app dispatch [--once] [--poll-ms N] [--allow-fingerprint-change]
//! app fork ID [--step N] [--event EVENT] [--set KEY=JSON]... [--id NEW_ID] [--allow-fingerprint-change]
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
//! as JSON and the exit status is 0; on failure the error goes to stderr and the exit status is
//! 1 (2 for a usage error). One line of statistics (`{"execution_id", "final_state", "steps",
//! "total_api_calls", "total_cost"}`) goes to stderr after a successful run. `--machine CHILD`
//! runs the child machine named `CHILD` (searched breadth-first through the tree of
//! `machines:`) with the root's configuration instead of the root machine. `inspect` prints an
//! execution's history (or, without an id, the executions) from the checkpoint store the
//! machine is configured with — whatever its backend — see [`crate::inspect`].

use std::process::{ExitCode, Stdio};

use async_trait::async_trait;
use clap::{Parser, Subcommand};

use crate::cli_signals;
use crate::engine::{InvokeRequest, MachineInvoker};
use crate::{Machine, MachineBuilder, RunOptions, RunResult, StateError, Value, error_type};

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
        /// The input: a JSON object, or `@path` to read it from a file.
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
    },
    /// Continue an execution from its latest checkpoint.
    Resume {
        /// The execution id.
        id: String,
        /// The execution is a run of this child machine.
        #[arg(long, short = 'm')]
        machine: Option<String>,
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
    },
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
            }
            eprintln!("{stats}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(builder: MachineBuilder, command: Command) -> Result<Outcome, String> {
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
            let result = machine.run_with(input, options).await;
            join(&machine).await;
            result
        }
        Command::Resume {
            id,
            machine,
            allow_fingerprint_change,
        } => {
            let machine = pick(&machine)?;
            let options =
                crate::ResumeOptions::new().allow_fingerprint_change(allow_fingerprint_change);
            let result = machine.resume_with(&id, options).await;
            join(&machine).await;
            result
        }
        Command::Inspect { id, json } => return inspect(&root, id.as_deref(), json).await,
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
                .map(Outcome::Text);
        }
        Command::Waiting { json } => {
            return cli_signals::waiting(&root, json).await.map(Outcome::Text);
        }
        Command::Dispatch {
            once,
            poll_ms,
            allow_fingerprint_change,
        } => {
            let text = cli_signals::dispatch(&root, once, poll_ms, allow_fingerprint_change).await;
            join(&root).await;
            return text.map(Outcome::Text);
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
    };
    result
        .map(|r| Outcome::Ran(Box::new(r)))
        .map_err(|e| e.to_string())
}

async fn inspect(root: &Machine, id: Option<&str>, json: bool) -> Result<Outcome, String> {
    let store = root.store().ok_or_else(|| {
        format!(
            "machine `{}` runs without checkpoints: nothing to inspect",
            root.spec().name
        )
    })?;
    crate::inspect::report(store, id, json)
        .await
        .map(Outcome::Text)
        .map_err(|e| e.to_string())
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
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the input file `{path}`: {e}"))?,
        None => arg.to_string(),
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
/// <json>`, or `program resume <id> --machine <child>`), reading the output from its stdout.
///
/// The child process builds its machine from the same code, so it shares nothing in memory
/// with the parent: give both the same on-disk checkpoint directory (`backend: local`) for
/// lineage and resume, and a shared result backend if children exchange results. The child's
/// agent calls and cost are not added to the parent's totals (the process reports them on
/// stderr only). Child machine names must be unique within the tree.
#[derive(Debug, Clone)]
pub struct SubprocessInvoker {
    program: std::path::PathBuf,
    args: Vec<String>,
}

impl SubprocessInvoker {
    /// Runs children with `program` (e.g. `std::env::current_exe()`), placing `args` before the
    /// CLI's own arguments.
    pub fn new(program: impl Into<std::path::PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
        }
    }

    /// Arguments placed before the subcommand (for apps that dispatch on a first argument).
    pub fn with_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }
}

#[async_trait]
impl MachineInvoker for SubprocessInvoker {
    async fn invoke(&self, request: InvokeRequest) -> Result<RunResult, StateError> {
        let mut command = tokio::process::Command::new(&self.program);
        command.args(&self.args);
        if request.resume {
            command.args([
                "resume",
                request.execution_id.as_str(),
                "--machine",
                request.machine,
            ]);
        } else {
            let input = serde_json::to_string(&request.input).map_err(|e| {
                StateError::new(error_type::MACHINE, format!("cannot encode the input: {e}"))
            })?;
            command.args([
                "run",
                "--machine",
                request.machine,
                "--execution-id",
                request.execution_id.as_str(),
                "--input",
                input.as_str(),
            ]);
            if let Some(parent) = &request.parent_execution_id {
                command.args(["--parent-id", parent.as_str()]);
            }
        }
        command.stdin(Stdio::null()).kill_on_drop(true);
        let out = command.output().await.map_err(|e| {
            StateError::new(
                error_type::MACHINE,
                format!("cannot start `{}`: {e}", self.program.display()),
            )
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or(stderr.trim());
            return Err(StateError::new(
                error_type::MACHINE,
                format!(
                    "child machine `{}` failed ({}): {message}",
                    request.machine, out.status
                ),
            ));
        }
        let output: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
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
            }),
            None => crate::RunStatus::Finished,
        };
        Ok(RunResult {
            status,
            output,
            execution_id: request.execution_id,
            final_state: String::new(),
            steps: 0,
            total_api_calls: 0,
            total_cost: 0.0,
            usage: Default::default(),
            context: Default::default(),
        })
    }
}
