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
    /// Rendered diagnostics (rustc format).
    pub rendered: String,
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

    /// Whether to print `cargo:rerun-if-changed` and `cargo:warning` lines (default: when run
    /// by cargo, i.e. when `OUT_DIR` is set).
    pub fn cargo_output(&mut self, on: bool) -> &mut Self {
        self.cargo_output = Some(on);
        self
    }

    /// The codegen options this builder uses.
    pub fn codegen_options(&self) -> CodegenOptions {
        let mut opts = CodegenOptions::default();
        if let Some(p) = &self.runtime_path
            && let Ok(ts) = p.parse::<TokenStream>()
        {
            opts.runtime_path = ts;
        }
        opts
    }

    /// Compile every machine; write `<module>.rs` for each into the output directory (only when
    /// the content changed). Errors of all machines are reported together.
    pub fn compile(&self) -> Result<Vec<BuiltMachine>, BuildError> {
        let out_dir = match &self.out_dir {
            Some(d) => d.clone(),
            None => std::env::var_os("OUT_DIR")
                .map(PathBuf::from)
                .ok_or_else(|| BuildError {
                    rendered: "OUT_DIR is not set: call `out_dir(...)` or run from a build script"
                        .into(),
                })?,
        };
        let cargo = self
            .cargo_output
            .unwrap_or_else(|| std::env::var_os("OUT_DIR").is_some());
        let opts = self.codegen_options();
        let mut built = Vec::new();
        let mut failures = String::new();
        for path in &self.machines {
            match crate::compile(path, None, &opts) {
                Ok(compiled) => {
                    let files_read = compiled.checked.files_read();
                    let warnings = compiled.warnings();
                    if cargo {
                        for f in &files_read {
                            println!("cargo:rerun-if-changed={}", f.display());
                        }
                        for w in &warnings {
                            for line in w.lines() {
                                println!("cargo:warning={line}");
                            }
                        }
                    }
                    let output = out_dir.join(format!("{}.rs", compiled.module));
                    let text = compiled.pretty();
                    let unchanged = std::fs::read_to_string(&output).is_ok_and(|old| old == text);
                    if !unchanged {
                        std::fs::write(&output, text).map_err(|e| BuildError {
                            rendered: format!("cannot write {}: {e}", output.display()),
                        })?;
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
                            println!("cargo:rerun-if-changed={}", f.display());
                        }
                        if checked.files_read().is_empty() {
                            println!("cargo:rerun-if-changed={}", path.display());
                        }
                    }
                    failures.push_str(&checked.render(false));
                }
            }
        }
        if failures.is_empty() {
            Ok(built)
        } else {
            Err(BuildError { rendered: failures })
        }
    }
}
