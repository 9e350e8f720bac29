//! The `flatmachine` command: check, expand, graph and schema for machine YAML; inspect,
//! convert and fork the checkpoints a run left behind; send signals to waiting runs and list
//! them (dispatching and resuming need the application binary: `cli::main`); operator commands
//! for distributed workers (`pool`, `workers`, `stats`, `prune`).

mod convert;
mod inspect;
mod signals;
mod ui;

use clap::{Parser, Subcommand, ValueEnum};
use flatmachine_build::graph::GraphFormat;
use flatmachine_runtime::distributed::admin::AdminTarget;
use flatmachine_runtime::distributed::admin::command::AdminCommand;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// FlatMachines compiler.
#[derive(Parser)]
#[command(
    name = "flatmachine",
    version,
    about = "Check, expand and draw FlatMachines YAML; inspect, convert and fork checkpoints; send signals to waiting runs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check machine files; print every diagnostic; exit 1 on any error.
    Check {
        /// Machine files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Colour the output (default: when stderr is a terminal).
        #[arg(long)]
        color: Option<bool>,
        /// A Rust tool the application registers (as `flatmachine!(.., tools = [..])`
        /// declares it); repeat for several.
        #[arg(long = "tool", value_name = "NAME")]
        tools: Vec<String>,
    },
    /// Print the Rust code generated for a machine.
    Expand {
        /// Machine file.
        file: PathBuf,
    },
    /// Draw states (with what each does) and transitions; child machines as subgraphs.
    Graph {
        /// Machine file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Mermaid)]
        format: Format,
    },
    /// Print the JSON Schema of a config format.
    Schema {
        /// Which format.
        #[arg(value_enum, default_value_t = Kind::Machine)]
        kind: Kind,
    },
    /// Print an execution's history from its checkpoints (without an id: list the executions).
    ///
    /// Reads the reference's layout (`DIR/{id}/step_*.json` + `DIR/{id}/latest`), so it works
    /// on checkpoints written by the Python `flatmachines` package as well.
    Inspect {
        /// The execution id.
        execution_id: Option<String>,
        /// The checkpoint store: a directory, `sqlite:PATH` for a SQLite database
        /// (`persistence: {backend: sqlite}`), or `redis://HOST:PORT/DB` for a Redis server
        /// (`persistence: {backend: redis}`). Default: where a run keeps them,
        /// `.checkpoints/` and `.checkpoints/checkpoints.sqlite`, whichever exist.
        #[arg(long)]
        dir: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Print run trees instead: each execution under the one that started it, where it
        /// stands, and whether anything will resume it (abandoned and orphaned children).
        #[arg(long)]
        tree: bool,
        /// The Redis key prefix (default `FLATMACHINE_REDIS_PREFIX`, else `flatmachine`).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Copy executions between checkpoint stores, byte for byte: the reference's file layout
    /// (a directory) and SQLite (`sqlite:PATH`), either way.
    ///
    /// Example: `flatmachine convert --from .checkpoints --to sqlite:.checkpoints/checkpoints.sqlite`.
    Convert {
        /// The store to read: a directory or `sqlite:PATH`.
        #[arg(long)]
        from: String,
        /// The store to write (created if needed): a directory or `sqlite:PATH`.
        #[arg(long)]
        to: String,
        /// Only these executions (default: every execution in --from).
        execution_ids: Vec<String>,
    },
    /// Signals for runs waiting in `wait_for` states.
    Signal {
        #[command(subcommand)]
        command: SignalCommand,
    },
    /// List the runs waiting for a signal (their latest checkpoint is `waiting`).
    Waiting {
        /// The checkpoint store: a directory, or `sqlite:PATH`.
        #[arg(long, default_value = ".checkpoints")]
        dir: String,
        /// Also ask this signal store (`sqlite:PATH`, `redis`, `redis://HOST:PORT`) whether
        /// each run is registered and what is pending on its channel.
        #[arg(long)]
        signals: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start a new execution from a checkpoint of another one (resume it with the app).
    ///
    /// The fork gets the source's checkpoints up to the chosen one, records where it came
    /// from, and none of the source's pending launches.
    Fork {
        /// The execution to fork.
        execution_id: String,
        /// The checkpoint store: a directory, or `sqlite:PATH`.
        #[arg(long, default_value = ".checkpoints")]
        dir: String,
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
    },
    /// Serve the console: a local web UI over a checkpoint store — runs, graphs, timelines,
    /// prompts and replies, live updates, signals for waiting runs.
    ///
    /// Example: `flatmachine ui --dir sqlite:.checkpoints/checkpoints.sqlite --port 8765`.
    Ui {
        /// The checkpoint store: a directory, `sqlite:PATH` or `redis://HOST:PORT/DB`
        /// (default: `.checkpoints/checkpoints.sqlite` when it exists, else `.checkpoints`).
        #[arg(long)]
        dir: Option<String>,
        /// The port (0: any free one).
        #[arg(long, default_value_t = flatmachine_runtime::console::DEFAULT_PORT)]
        port: u16,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Listen on an address that is not a loopback one (the console has no login).
        #[arg(long)]
        allow_remote: bool,
        /// Where signals sent from the page go: `sqlite:PATH`, `redis` or `redis://HOST:PORT`
        /// (without it the page cannot send signals).
        #[arg(long)]
        signals: Option<String>,
        /// The Redis key prefix (default `FLATMACHINE_REDIS_PREFIX`, else `flatmachine`).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Operator commands for distributed workers: pools, workers, stats, retention.
    #[command(flatten)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum SignalCommand {
    /// Send a signal on CHANNEL: it is kept until a run waiting there takes it (a dispatcher
    /// delivers it) or its time to live passes.
    ///
    /// Example: `flatmachine signal send approval/42 --data '{"decision": "approve"}'`.
    Send {
        /// The channel (what the `wait_for` state renders, e.g. `approval/42`).
        channel: String,
        /// The signal's data: JSON, or `@path` to read it from a file.
        #[arg(long, short = 'd', default_value = "null")]
        data: String,
        /// The signal store: `sqlite:PATH`, `redis` or `redis://HOST:PORT` (default: what
        /// `--machine` names, else sqlite:workers.sqlite).
        #[arg(long)]
        signals: Option<String>,
        /// Take the signal store from this machine file's `settings.backends`.
        #[arg(long, conflicts_with = "signals")]
        machine: Option<PathBuf>,
        /// Drop the signal if no run took it within this many seconds (default: 7 days).
        #[arg(long, conflicts_with = "keep")]
        ttl: Option<f64>,
        /// Keep the signal until a run takes it.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Mermaid,
    Dot,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Machine,
    Agent,
    Profiles,
}

/// Write to stdout; a closed pipe (`flatmachine schema | head`) ends quietly instead of panicking.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            files,
            color,
            tools,
        } => {
            let color = color.unwrap_or_else(|| std::io::stderr().is_terminal());
            let mut failed = false;
            for f in files {
                let checked = flatmachine_build::check_with_tools(&f, None, &tools);
                eprint!("{}", checked.render(color));
                let errors = checked.diagnostics.errors().count();
                let warnings = checked.diagnostics.warnings().count();
                failed |= errors > 0;
                eprintln!("{}: {errors} error(s), {warnings} warning(s)", f.display());
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Expand { file } => {
            match flatmachine_build::compile(&file, None, &Default::default()) {
                Ok(c) => {
                    eprint!("{}", c.checked.render(false));
                    emit(&c.pretty());
                    ExitCode::SUCCESS
                }
                Err(checked) => {
                    eprint!("{}", checked.render(std::io::stderr().is_terminal()));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Graph { file, format } => {
            let checked = flatmachine_build::check(&file, None);
            let irs: Option<Vec<_>> = checked.irs.iter().cloned().collect();
            match irs {
                Some(irs) if !irs.is_empty() && !checked.has_errors() => {
                    let fmt = match format {
                        Format::Mermaid => GraphFormat::Mermaid,
                        Format::Dot => GraphFormat::Dot,
                    };
                    emit(&flatmachine_build::graph::render_all(&irs, fmt));
                    ExitCode::SUCCESS
                }
                _ => {
                    eprint!("{}", checked.render(std::io::stderr().is_terminal()));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Schema { kind } => {
            let schema = match kind {
                Kind::Machine => flatmachine_build::model::machine_schema(),
                Kind::Agent => flatmachine_build::model::agent_schema(),
                Kind::Profiles => flatmachine_build::model::profiles_schema(),
            };
            emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            ));
            ExitCode::SUCCESS
        }
        Command::Inspect {
            execution_id,
            dir,
            json,
            tree,
            prefix,
        } => match inspect::run(
            dir.as_deref(),
            execution_id.as_deref(),
            json,
            tree,
            prefix.as_deref(),
        ) {
            Ok(out) => {
                eprint!("{}", out.notes);
                emit(&out.stdout);
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!(
                    "error: {}",
                    flatmachine_runtime::inspect::escape_controls(&message)
                );
                ExitCode::FAILURE
            }
        },
        Command::Signal {
            command:
                SignalCommand::Send {
                    channel,
                    data,
                    signals: store,
                    machine,
                    ttl,
                    keep,
                },
        } => {
            let store = match (store, machine) {
                (Some(s), _) => Ok(s),
                (None, Some(file)) => signals::signals_of_machine(&file),
                (None, None) => Ok(signals::DEFAULT_SIGNALS.to_string()),
            };
            finish(store.and_then(|s| signals::send(&s, &channel, &data, ttl, keep)))
        }
        Command::Waiting {
            dir,
            signals: store,
            json,
        } => finish(signals::waiting(&dir, store.as_deref(), json)),
        Command::Fork {
            execution_id,
            dir,
            step,
            event,
            set,
            new_id,
        } => {
            let options = signals::parse_sets(&set).map(|sets| {
                let mut options = flatmachine_runtime::engine::ForkOptions::new();
                if let Some(step) = step {
                    options = options.step(step);
                }
                if let Some(event) = event {
                    options = options.event(event);
                }
                if let Some(id) = new_id {
                    options = options.execution_id(id);
                }
                for (key, value) in sets {
                    options = options.set(key, value);
                }
                options
            });
            finish(options.and_then(|o| signals::fork(&dir, &execution_id, o)))
        }
        Command::Convert {
            from,
            to,
            execution_ids,
        } => match convert::run(&from, &to, &execution_ids) {
            Ok(text) => {
                emit(&text);
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!(
                    "error: {}",
                    flatmachine_runtime::inspect::escape_controls(&message)
                );
                ExitCode::FAILURE
            }
        },
        Command::Ui {
            dir,
            port,
            bind,
            allow_remote,
            signals,
            prefix,
        } => finish(ui::run(ui::UiArgs {
            dir,
            prefix,
            signals,
            bind,
            port,
            allow_remote,
        })),
        Command::Admin(command) => match admin(command) {
            Ok(text) => {
                emit(&text);
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Prints a command's text, or its error with exit status 1.
fn finish(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            emit(&text);
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an operator command on the store its `--store` names.
fn admin(command: AdminCommand) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(flatmachine_runtime::distributed::admin::command::run(
        command,
        &AdminTarget::default(),
    ))
}
