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

/// Compilation failed: the rendered diagnostics of every failing machine.
#[derive(Debug)]
pub struct BuildError {
    /// Rendered diagnostics of every failure (rustc format), one after the other.
    pub rendered: String,
    /// Each failure on its own: the machine file (`None` for a problem with no single file,
    /// such as a missing `OUT_DIR`) and its rendered diagnostics.
    pub failures: Vec<(Option<PathBuf>, String)>,
}

impl BuildError {
    fn single(rendered: String) -> Self {
        Self {
            failures: vec![(None, rendered.clone())],
            rendered,
        }
    }
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
        self.compile_with(&mut |line| println!("{line}"))
    }

    /// [`compile`](Self::compile), handing each `cargo:` line to `emit` instead of printing
    /// it (for build scripts that post-process them, and for tests).
    pub fn compile_with(
        &self,
        emit: &mut dyn FnMut(String),
    ) -> Result<Vec<BuiltMachine>, BuildError> {
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
        let mut failures: Vec<(Option<PathBuf>, String)> = Vec::new();
        for path in &self.machines {
            match crate::compile(path, None, &opts) {
                Ok(compiled) => {
                    let files_read = compiled.checked.files_read();
                    let warnings = compiled.warnings();
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
        if failures.is_empty() {
            Ok(built)
        } else {
            Err(BuildError {
                rendered: failures.iter().map(|(_, r)| r.as_str()).collect(),
                failures,
            })
        }
    }
}
