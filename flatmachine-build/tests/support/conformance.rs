//! Where the optional conformance corpus is: the directory named by `FLATMACHINE_CONFORMANCE_DIR`
//! (the folder that holds `corpus/MANIFEST.tsv`; `.ci/run` points it at `../shared/conformance`
//! when that exists). A clone of the repository alone has no corpus: the tests over it then
//! print a notice and check nothing, and in-repository fixtures cover the same features.
//!
//! Shared by the test crates with `#[path]`, so it has no dependencies.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable naming the conformance directory.
pub const CONFORMANCE_ENV: &str = "FLATMACHINE_CONFORMANCE_DIR";

/// The corpus directory (`$FLATMACHINE_CONFORMANCE_DIR/corpus`), or `None` after printing a
/// notice naming `test` when the variable is unset or empty. A relative path is taken from the
/// repository root. A variable that names a directory without `corpus/MANIFEST.tsv` is a
/// mistake, and the test fails.
pub fn corpus_dir(test: &str) -> Option<PathBuf> {
    corpus_dir_or(&format!(
        "`{test}` and the other corpus tests of this test binary check nothing"
    ))
}

/// [`corpus_dir`], with the notice saying `consequence` (what is left out without the corpus).
pub fn corpus_dir_or(consequence: &str) -> Option<PathBuf> {
    let value = std::env::var_os(CONFORMANCE_ENV).filter(|v| !v.is_empty());
    let Some(value) = value else {
        notice(consequence);
        return None;
    };
    let given = PathBuf::from(value);
    let dir = if given.is_absolute() {
        given
    } else {
        repository_root().join(given)
    };
    let corpus = dir.join("corpus");
    assert!(
        corpus.join("MANIFEST.tsv").is_file(),
        "{CONFORMANCE_ENV}={} has no corpus/MANIFEST.tsv",
        dir.display()
    );
    Some(corpus)
}

/// The workspace root: the parent of the crate directory these tests are compiled in.
fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Written to the process's stderr directly (the test harness captures only `eprintln!`), so it
/// shows in every test run; once per test binary.
fn notice(consequence: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| notice_now(consequence));
}

fn notice_now(consequence: &str) {
    let text = format!(
        "\n\
         ****************************************************************************\n\
         NOTICE: the conformance corpus is not available ({CONFORMANCE_ENV} is unset):\n\
         {consequence}.\n\
         Set {CONFORMANCE_ENV} to a checkout of the FlatMachines conformance files\n\
         (the folder holding corpus/MANIFEST.tsv) to include it; in-repository fixtures\n\
         cover the same features.\n\
         ****************************************************************************\n"
    );
    let _ = std::io::stderr().write_all(text.as_bytes());
}
