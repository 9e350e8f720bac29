//! The `build.rs` API: compile machines into `OUT_DIR`, like prost-build and tonic-build.
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     flatmachine_build::Builder::new()
//!         .machine("machines/order.yml")
//!         .compile()?;
//!     Ok(())
//! }
//! // src/lib.rs
//! // include!(concat!(env!("OUT_DIR"), "/order.rs"));
//! ```

use crate::codegen::CodegenOptions;
use proc_macro2::TokenStream;
use std::fmt;
use std::path::{Path, PathBuf};

/// Compiles machine YAML files into Rust source files.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    machines: Vec<PathBuf>,
    out_dir: Option<PathBuf>,
    runtime_path: Option<String>,
    cargo_output: Option<bool>,
    cargo_warnings: Option<bool>,
    rust_tools: Vec<String>,
    /// The user's own input / output types per machine file (typed runs, docs/typed.md).
    io_types: Vec<(PathBuf, Option<String>, Option<String>)>,
}

/// What one machine compiled to.
#[derive(Debug, Clone)]
pub struct BuiltMachine {
    /// The machine file.
    pub source: PathBuf,
    /// The root module name (also the output file stem).
    pub module: String,
    /// Where the code was written.
    pub output: PathBuf,
    /// Every file read while compiling it.
    pub files_read: Vec<PathBuf>,
    /// Rendered warnings.
    pub warnings: Vec<String>,
}

/// One compiler warning, for a tool to show (whether or not cargo output is on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildWarning {
    /// The machine file being compiled.
    pub machine: PathBuf,
    /// Where in the YAML (`file:line:col`), when the warning has a place.
    pub location: Option<String>,
    /// The one-line message.
    pub message: String,
    /// The whole warning in rustc's format (place, snippet, help and notes).
    pub rendered: String,
}

/// What a build produced: the machines written and every warning of every machine.
#[derive(Debug, Clone, Default)]
pub struct BuildReport {
    /// The machines compiled and written.
    pub machines: Vec<BuiltMachine>,
    /// Every warning, machine by machine, in order of place.
    pub warnings: Vec<BuildWarning>,
}

/// Compilation failed: the rendered diagnostics of every failing machine.
///
/// Both `Display` and `Debug` print the diagnostics as rustc does (real newlines, once), so a
/// build script can simply return it: `fn main() -> Result<(), Box<dyn Error>>` prints
/// `Error: ` and then the diagnostics.
pub struct BuildError {
    /// Rendered diagnostics of every failure (rustc format), one after the other.
    pub rendered: String,
    /// Each failure on its own: the machine file (`None` for a problem with no single file,
    /// such as a missing `OUT_DIR`) and its rendered diagnostics.
    pub failures: Vec<(Option<PathBuf>, String)>,
    /// What the build did produce: the machines that compiled and the warnings of all of them
    /// (failed ones included).
    pub report: BuildReport,
}

impl BuildError {
    fn single(rendered: String) -> Self {
        Self {
            failures: vec![(None, rendered.clone())],
            rendered,
            report: BuildReport::default(),
        }
    }
}

/// The warnings of a checked machine, one value each.
fn warnings_of(machine: &Path, checked: &crate::Checked) -> Vec<BuildWarning> {
    checked
        .diagnostics
        .warnings()
        .map(|d| BuildWarning {
            machine: machine.to_path_buf(),
            location: d.span.map(|s| checked.db().location(s)),
            message: d.message.clone(),
            rendered: d.render(checked.db(), false),
        })
        .collect()
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flatmachine: could not compile machines\n\n{}",
            self.rendered
        )
    }
}

impl fmt::Debug for BuildError {
    /// The same text as `Display`: `main` returning `Err` prints the `Debug` form, and escaped
    /// newlines would make the diagnostics unreadable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for BuildError {}

impl Builder {
    /// A builder with no machines.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a machine file (relative to the crate root, as build scripts run there).
    pub fn machine(&mut self, path: impl AsRef<Path>) -> &mut Self {
        self.machines.push(path.as_ref().to_path_buf());
        self
    }

    /// Add a machine file whose typed runs use your own serde types (paths as written where
    /// the generated file is `include!`d; `None` keeps the generated type), like
    /// `flatmachine!("m.yml", input = Order, output = Outcome)`: the types are checked by rustc
    /// to have every `input.<field>` the templates read and every key a final state outputs.
    pub fn typed_machine(
        &mut self,
        path: impl AsRef<Path>,
        input: Option<&str>,
        output: Option<&str>,
    ) -> &mut Self {
        let path = path.as_ref().to_path_buf();
        self.io_types.push((
            path.clone(),
            input.map(str::to_string),
            output.map(str::to_string),
        ));
        self.machine(path)
    }

    /// Add several machine files.
    pub fn machines<P: AsRef<Path>>(&mut self, paths: impl IntoIterator<Item = P>) -> &mut Self {
        for p in paths {
            self.machine(p);
        }
        self
    }

    /// Write into this directory instead of `OUT_DIR`.
    pub fn out_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.out_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Path of the runtime crate in generated code (default `::flatmachine_runtime`).
    pub fn runtime_path(&mut self, path: impl Into<String>) -> &mut Self {
        self.runtime_path = Some(path.into());
        self
    }

    /// Whether to print `cargo:` lines at all (`rerun-if-changed` and `warning`; default: when
    /// run by cargo, i.e. when `OUT_DIR` is set). To silence only the warnings, use
    /// [`cargo_warnings`](Self::cargo_warnings): switching this off inside a build script
    /// stops cargo from rebuilding when a machine file changes.
    pub fn cargo_output(&mut self, on: bool) -> &mut Self {
        self.cargo_output = Some(on);
        self
    }

    /// Whether to print compiler warnings as `cargo:warning` lines (default: yes). Never
    /// affects `cargo:rerun-if-changed`, which is printed whenever cargo output is on.
    pub fn cargo_warnings(&mut self, on: bool) -> &mut Self {
        self.cargo_warnings = Some(on);
        self
    }

    /// Declares the Rust tools the application registers on the `MachineBuilder` (as
    /// `flatmachine!("m.yml", tools = [..])` does), for every machine of this builder.
    pub fn tools<S: Into<String>>(&mut self, names: impl IntoIterator<Item = S>) -> &mut Self {
        self.rust_tools.extend(names.into_iter().map(Into::into));
        self
    }

    /// `opts` with the user's own types for `path`, if [`typed_machine`](Self::typed_machine)
    /// named any; a type that is not Rust syntax is an error message.
    fn io_options(&self, path: &Path, opts: &CodegenOptions) -> Result<CodegenOptions, String> {
        let mut opts = opts.clone();
        let Some((_, input, output)) = self.io_types.iter().find(|(p, _, _)| p == path) else {
            return Ok(opts);
        };
        let parse = |ty: &Option<String>| -> Result<Option<TokenStream>, String> {
            ty.as_deref()
                .map(|t| {
                    syn::parse_str::<syn::Type>(t)
                        .map(|t| quote::quote!(#t))
                        .map_err(|e| {
                            format!(
                                "error: `{t}` (a type given to `typed_machine` for {}) is not a Rust type: {e}\n\n",
                                path.display()
                            )
                        })
                })
                .transpose()
        };
        opts.input_type = parse(input)?;
        opts.output_type = parse(output)?;
        Ok(opts)
    }

    /// The codegen options this builder uses.
    pub fn codegen_options(&self) -> CodegenOptions {
        let mut opts = CodegenOptions {
            rust_tools: self.rust_tools.clone(),
            ..CodegenOptions::default()
        };
        if let Some(p) = &self.runtime_path
            && let Ok(ts) = p.parse::<TokenStream>()
        {
            opts.runtime_path = ts;
        }
        opts
    }

    /// Compile every machine; write `<module>.rs` for each into the output directory (only when
    /// the content changed). Every machine is compiled even when an earlier one failed, and the
    /// errors of all of them are reported together. Two machines whose modules (output files)
    /// would have the same name are an error naming both files (nothing is overwritten).
    pub fn compile(&self) -> Result<Vec<BuiltMachine>, BuildError> {
        self.compile_report().map(|report| report.machines)
    }

    /// [`compile`](Self::compile), returning a [`BuildReport`] with every warning as a value
    /// as well (they are also printed as `cargo:warning` lines when cargo output is on; with
    /// it off, the report is where tools find them). On failure the report is in
    /// [`BuildError::report`].
    pub fn compile_report(&self) -> Result<BuildReport, BuildError> {
        self.compile_report_with(&mut |line| println!("{line}"))
    }

    /// [`compile`](Self::compile), handing each `cargo:` line to `emit` instead of printing
    /// it (for build scripts that post-process them, and for tests).
    pub fn compile_with(
        &self,
        emit: &mut dyn FnMut(String),
    ) -> Result<Vec<BuiltMachine>, BuildError> {
        self.compile_report_with(emit).map(|report| report.machines)
    }

    /// [`compile_report`](Self::compile_report), handing each `cargo:` line to `emit`.
    pub fn compile_report_with(
        &self,
        emit: &mut dyn FnMut(String),
    ) -> Result<BuildReport, BuildError> {
        let out_dir = match &self.out_dir {
            Some(d) => d.clone(),
            None => std::env::var_os("OUT_DIR")
                .map(PathBuf::from)
                .ok_or_else(|| {
                    BuildError::single(
                        "OUT_DIR is not set: call `out_dir(...)` or run from a build script".into(),
                    )
                })?,
        };
        let cargo = self
            .cargo_output
            .unwrap_or_else(|| std::env::var_os("OUT_DIR").is_some());
        let warn = cargo && self.cargo_warnings.unwrap_or(true);
        let opts = self.codegen_options();
        let mut built: Vec<BuiltMachine> = Vec::new();
        let mut all_warnings: Vec<BuildWarning> = Vec::new();
        let mut failures: Vec<(Option<PathBuf>, String)> = Vec::new();
        for path in &self.machines {
            let opts = match self.io_options(path, &opts) {
                Ok(o) => o,
                Err(message) => {
                    failures.push((Some(path.clone()), message));
                    continue;
                }
            };
            match crate::compile(path, None, &opts) {
                Ok(compiled) => {
                    let files_read = compiled.checked.files_read();
                    let warnings = compiled.warnings();
                    all_warnings.extend(warnings_of(path, &compiled.checked));
                    if cargo {
                        for f in &files_read {
                            emit(format!("cargo:rerun-if-changed={}", f.display()));
                        }
                    }
                    if warn {
                        for w in &warnings {
                            for line in w.lines() {
                                emit(format!("cargo:warning={line}"));
                            }
                        }
                    }
                    if let Some(first) = built.iter().find(|b| b.module == compiled.module) {
                        failures.push((
                            Some(path.clone()),
                            format!(
                                "error: two machines compile to the same module `{module}` (output file `{module}.rs`):\n  --> {}\n  --> {}\n   = help: give one of them another `data.name`, or compile them with separate `Builder`s and `out_dir`s\n\n",
                                first.source.display(),
                                path.display(),
                                module = compiled.module,
                            ),
                        ));
                        continue;
                    }
                    let output = out_dir.join(format!("{}.rs", compiled.module));
                    let text = compiled.pretty();
                    let unchanged = std::fs::read_to_string(&output).is_ok_and(|old| old == text);
                    if !unchanged && let Err(e) = std::fs::write(&output, text) {
                        failures.push((
                            Some(path.clone()),
                            format!("error: cannot write {}: {e}\n\n", output.display()),
                        ));
                        continue;
                    }
                    built.push(BuiltMachine {
                        source: path.clone(),
                        module: compiled.module,
                        output,
                        files_read,
                        warnings,
                    });
                }
                Err(checked) => {
                    all_warnings.extend(warnings_of(path, &checked));
                    if cargo {
                        for f in checked.files_read() {
                            emit(format!("cargo:rerun-if-changed={}", f.display()));
                        }
                        if checked.files_read().is_empty() {
                            emit(format!("cargo:rerun-if-changed={}", path.display()));
                        }
                    }
                    failures.push((Some(path.clone()), checked.render(false)));
                }
            }
        }
        let report = BuildReport {
            machines: built,
            warnings: all_warnings,
        };
        if failures.is_empty() {
            Ok(report)
        } else {
            Err(BuildError {
                rendered: failures.iter().map(|(_, r)| r.as_str()).collect(),
                failures,
                report,
            })
        }
    }
}
