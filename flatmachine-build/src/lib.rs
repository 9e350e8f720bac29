//! The FlatMachines compiler: loads machine YAML (and the agent, machine and profile files it
//! references), validates it, and generates Rust that runs on `flatmachine-runtime`.
//!
//! The pipeline is `loader` (YAML with locations, schema, references) → `analyze` (semantic
//! checks, lowering to `ir`) → `codegen` (tokens, pretty-printed). [`compile`] runs all of it;
//! the `flatmachine!` macro, the [`Builder`] for build.rs and the `flatmachine` CLI are thin
//! users of it.

// Diagnostics are the cold path; keeping them unboxed keeps the code plain.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

pub mod agents;
pub mod analyze;
pub mod builder;
pub mod codegen;
pub mod dataflow;
pub mod diagnostic;
pub mod expr;
pub mod fingerprint;
pub mod graph;
pub mod ir;
pub mod later_keys;
pub mod loader;
pub mod model;
pub mod reads;
pub mod source;
pub mod templates;
pub mod yaml;

pub use builder::{BuildReport, BuildWarning, Builder};
pub use codegen::CodegenOptions;
pub use diagnostic::{Diagnostic, Diagnostics, Severity};

use proc_macro2::TokenStream;
use source::SourceDb;
use std::path::{Path, PathBuf};

/// The result of checking a machine: every file read and every diagnostic.
#[derive(Debug)]
pub struct Checked {
    /// The loaded project (files, YAML trees, typed configs).
    pub project: loader::Project,
    /// The lowered machines (root first); `None` where a machine could not be lowered.
    pub irs: Vec<Option<ir::MachineIr>>,
    /// Every problem found, sorted by place.
    pub diagnostics: Diagnostics,
}

impl Checked {
    /// All files read.
    pub fn db(&self) -> &SourceDb {
        &self.project.db
    }

    /// Whether any error was found.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.has_errors()
    }

    /// Every diagnostic rendered in rustc's format.
    pub fn render(&self, color: bool) -> String {
        self.diagnostics.render(&self.project.db, color)
    }

    /// Paths of every file read.
    pub fn files_read(&self) -> Vec<PathBuf> {
        self.project.files_read()
    }
}

/// Load and check a machine file and everything it references. `display` is how the root file
/// is named in diagnostics (defaults to the path as given).
pub fn check(path: &Path, display: Option<String>) -> Checked {
    check_with_tools(path, display, &[])
}

/// [`check`], knowing the names of the Rust tools the application registers on the builder
/// (`flatmachine!("m.yml", tools = [..])`, `Builder::tools`, `flatmachine check --tool`).
pub fn check_with_tools(path: &Path, display: Option<String>, rust_tools: &[String]) -> Checked {
    let project = loader::load_with_display(path, display);
    let (irs, more) = analyze::analyze_with_tools(&project, rust_tools);
    let mut diagnostics = project.diagnostics.clone();
    diagnostics.extend(more.into_vec());
    diagnostics.sort();
    Checked {
        project,
        irs,
        diagnostics,
    }
}

/// A successful compilation.
#[derive(Debug)]
pub struct Compiled {
    /// The checked project.
    pub checked: Checked,
    /// Rust module name of the root machine.
    pub module: String,
    /// The generated tokens.
    pub tokens: TokenStream,
}

impl Compiled {
    /// The generated code, pretty-printed.
    pub fn pretty(&self) -> String {
        codegen::pretty(&self.tokens)
    }

    /// Warnings, rendered.
    pub fn warnings(&self) -> Vec<String> {
        self.checked
            .diagnostics
            .warnings()
            .map(|d| d.render(self.checked.db(), false))
            .collect()
    }
}

/// Check a machine and, when it has no errors, generate its Rust code.
pub fn compile(
    path: &Path,
    display: Option<String>,
    opts: &CodegenOptions,
) -> Result<Compiled, Box<Checked>> {
    let checked = check_with_tools(path, display, &opts.rust_tools);
    if checked.has_errors() || checked.irs.is_empty() || checked.irs.iter().any(Option::is_none) {
        return Err(Box::new(checked));
    }
    let irs: Vec<ir::MachineIr> = checked.irs.iter().flatten().cloned().collect();
    let mut opts = opts.clone();
    if opts.warnings_as_deprecations && opts.warnings.is_empty() {
        // rustc prints its own "warning: use of deprecated constant ...: " before the note.
        opts.warnings = checked
            .diagnostics
            .warnings()
            .map(|d| {
                let text = d.render(checked.db(), false);
                text.strip_prefix("warning: ")
                    .map(str::to_string)
                    .unwrap_or(text)
            })
            .collect();
    }
    if opts.track_files_read {
        opts.track_files = checked.files_read();
    }
    let tokens = codegen::generate(&irs, &opts);
    let module = irs[0].module.clone();
    Ok(Compiled {
        checked,
        module,
        tokens,
    })
}

/// A flatagent compiled on its own (`flatagent!("agent.yml")`).
#[derive(Debug)]
pub struct CompiledAgent {
    /// The checked project (the agent file and its profiles).
    pub checked: Checked,
    /// The generated module's name (the agent's `data.name`, else the file name, snake_case).
    pub module: String,
    /// The generated tokens.
    pub tokens: TokenStream,
}

/// Check a flatagent file (with the `profiles.yml` beside it) and, when it has no errors,
/// generate a module holding its config, its typed output and a callable `Agent`.
pub fn compile_agent(
    path: &Path,
    display: Option<String>,
    opts: &CodegenOptions,
) -> Result<CompiledAgent, Box<Checked>> {
    let project = loader::load_agent_file(path, display);
    let (agent, more) = analyze::analyze_agent(&project);
    let mut diagnostics = project.diagnostics.clone();
    diagnostics.extend(more.into_vec());
    diagnostics.sort();
    let checked = Checked {
        project,
        irs: Vec::new(),
        diagnostics,
    };
    let flat = match agent.map(|a| a.kind) {
        Some(ir::AgentKindIr::Flat(f)) if !checked.has_errors() => f,
        _ => return Err(Box::new(checked)),
    };
    let module = ir::snake_ident(&flat.name);
    let mut opts = opts.clone();
    if opts.track_files_read {
        opts.track_files = checked.files_read();
    }
    let tokens = codegen::generate_agent(&module, &flat, &opts);
    Ok(CompiledAgent {
        checked,
        module,
        tokens,
    })
}
