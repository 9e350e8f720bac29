//! The `flatmachine` command: check, expand, graph and schema for machine YAML; inspect for
//! the checkpoints a run left behind.

mod convert;
mod inspect;

use clap::{Parser, Subcommand, ValueEnum};
use flatmachine_build::graph::GraphFormat;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// FlatMachines compiler.
#[derive(Parser)]
#[command(
    name = "flatmachine",
    version,
    about = "Check, expand and draw FlatMachines YAML; inspect and convert checkpoints"
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
    /// Draw states and transitions.
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
        /// The checkpoint store: a directory, or `sqlite:PATH` for a SQLite database
        /// (`persistence: {backend: sqlite}`).
        #[arg(long, default_value = ".checkpoints")]
        dir: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
            match checked.irs.first().and_then(Option::as_ref) {
                Some(ir) if !checked.has_errors() => {
                    let fmt = match format {
                        Format::Mermaid => GraphFormat::Mermaid,
                        Format::Dot => GraphFormat::Dot,
                    };
                    emit(&flatmachine_build::graph::render(ir, fmt));
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
        } => match inspect::run(&dir, execution_id.as_deref(), json) {
            Ok(text) => {
                emit(&text);
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        },
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
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        },
    }
}
