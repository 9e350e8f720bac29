//! Snapshots (insta) of the generated code for a few machines, and of the rendered diagnostics of
//! a broken one. Review changes with `cargo insta review`.

use flatmachine_build::CodegenOptions;
use std::path::{Path, PathBuf};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The repository root (machines of the examples are snapshotted too).
fn repository_root() -> PathBuf {
    manifest_dir().join("..")
}

/// Replace absolute paths (there should be none, as every file is shown by a relative display
/// name) so snapshots do not depend on where the repository is checked out.
fn normalize(text: &str) -> String {
    let mut out = text.to_string();
    let mut roots = vec![
        (manifest_dir().to_path_buf(), "$CRATE"),
        (repository_root(), "$REPO"),
    ];
    roots.extend(
        roots
            .clone()
            .into_iter()
            .filter_map(|(p, name)| p.canonicalize().ok().map(|c| (c, name))),
    );
    for (root, name) in roots {
        out = out.replace(&root.display().to_string(), name);
    }
    out
}

fn expand(base: &Path, rel: &str) -> String {
    let compiled = flatmachine_build::compile(
        &base.join(rel),
        Some(rel.to_string()),
        &CodegenOptions::default(),
    )
    .unwrap_or_else(|c| panic!("{rel} should compile:\n{}", c.render(false)));
    let text = compiled.pretty();
    syn::parse_file(&text).unwrap_or_else(|e| panic!("generated code for {rel} is not Rust: {e}"));
    normalize(&text)
}

#[test]
fn job_worker_with_a_child_machine() {
    let code = expand(
        &repository_root(),
        "examples/machines/distributed/job_worker.yml",
    );
    assert!(code.contains("pub mod children"));
    insta::assert_snapshot!("job_worker", code);
}

#[test]
fn writer_critic() {
    let code = expand(
        &repository_root(),
        "examples/machines/writer_critic/machine.yml",
    );
    insta::assert_snapshot!("writer_critic", code);
}

#[test]
fn review_batch_foreach_conditions_on_error_output() {
    let code = expand(manifest_dir(), "tests/machines/review_batch.yml");
    assert!(code.contains("foreach: Some("));
    insta::assert_snapshot!("review_batch", code);
}

#[test]
fn broken_machine_diagnostics() {
    let rel = "tests/machines/broken.yml";
    let checked = flatmachine_build::check(&manifest_dir().join(rel), Some(rel.to_string()));
    assert!(checked.has_errors());
    assert!(
        flatmachine_build::compile(
            &manifest_dir().join(rel),
            Some(rel.into()),
            &Default::default()
        )
        .is_err()
    );
    insta::assert_snapshot!("broken_diagnostics", normalize(&checked.render(false)));
}

/// The typed path (docs/typed.md): `Input` / `Output` from `data.input` / `data.output`, the
/// `TypedMachineDef` impl and `agents::AnyOutput`, for the example in this repository.
#[test]
fn typed_triage() {
    let code = expand(
        &manifest_dir().join("../examples/machines"),
        "triage/machine.yml",
    );
    assert!(code.contains("pub struct Input {"));
    assert!(code.contains("pub enum AnyOutput {"));
    insta::assert_snapshot!("typed_triage", code);
}
