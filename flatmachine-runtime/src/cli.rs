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
//! app resume ID [--machine CHILD]
//! app inspect [ID] [--json]
//! app pool list | pool jobs POOL | pool requeue POOL … | pool drop-poisoned POOL …
//! app workers list | workers remove …
//! app stats | app prune
//! ```
//!
//! The contract (what [`SubprocessInvoker`] relies on): the run's output is printed to stdout
//! as JSON and the exit status is 0; on failure the error goes to stderr and the exit status is
//! 1 (2 for a usage error). One line of statistics (`{"execution_id", "final_state", "steps",
//! "total_api_calls", "total_cost"}`) goes to stderr after a successful run. `--machine CHILD`
//! runs the child machine named `CHILD` (searched breadth-first through the tree of
//! `machines:`) with the root's configuration instead of the root machine. `inspect` prints an
//! execution's history (or, without an id, the executions) from the checkpoint store the
//! machine is configured with — whatever its backend — see [`crate::inspect`]. The operator
//! commands (`pool`, `workers`, `stats`, `prune`) work on the pools, registry and checkpoints
//! the machine's YAML names — see [`crate::distributed::admin::command`].

use std::process::{ExitCode, Stdio};

use async_trait::async_trait;
use clap::{Parser, Subcommand};

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
    },
    /// Print an execution's history from its checkpoints (without an id: list executions).
    Inspect {
        /// The execution id.
        id: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Operator commands for distributed workers (pools, workers, stats, retention), on the
    /// stores the machine's YAML names.
    #[command(flatten)]
    Admin(crate::distributed::admin::command::AdminCommand),
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
            eprintln!(
                "{}",
                serde_json::json!({
                    "execution_id": result.execution_id,
                    "final_state": result.final_state,
                    "steps": result.steps,
                    "total_api_calls": result.total_api_calls,
                    "total_cost": result.total_cost,
                })
            );
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
        Command::Resume { id, machine } => {
            let machine = pick(&machine)?;
            let result = machine.resume(&id).await;
            join(&machine).await;
            result
        }
        Command::Inspect { id, json } => return inspect(&root, id.as_deref(), json).await,
        Command::Admin(command) => return admin(&root, command).await,
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
        Ok(RunResult {
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
