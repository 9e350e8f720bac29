//! Compile-time behaviour of `flatmachine!`: every broken machine is a compile error that
//! points into the YAML (`file:line:col`, the problem, a hint); valid machines compile, and
//! compiler warnings do not stop them.
//!
//! trybuild compiles the cases as binaries of a generated crate in
//! `<target>/tests/trybuild/flatmachine-tests/`, and that directory, not `tests/`, is the
//! `CARGO_MANIFEST_DIR` the macro resolves paths against (checked by experiment). So the YAML
//! the cases use (`tests/ui/machines/`) is copied there first, at the same relative path
//! (`ui/machines/...`), which also keeps the paths in the expected `.stderr` files short.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `<target>/tests/trybuild/flatmachine-tests`, found the way trybuild finds it.
fn trybuild_project_dir() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version=1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run `cargo metadata`");
    assert!(out.status.success(), "cargo metadata failed");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let target = meta["target_directory"]
        .as_str()
        .expect("target_directory in cargo metadata");
    Path::new(target).join("tests/trybuild/flatmachine-tests")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// Put a fresh copy of `tests/ui/machines` at `<project>/ui/machines`.
fn stage_machines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/machines");
    let dest = trybuild_project_dir().join("ui/machines");
    if dest.exists() {
        std::fs::remove_dir_all(&dest).unwrap();
    }
    copy_dir(&src, &dest);
}

#[test]
fn ui() {
    stage_machines();
    // trybuild's generated crate has no `[profile]` of its own, so cargo's default (full debug
    // info, for every dependency too) would make its target directory ~6 GB: it ran a CI
    // machine out of disk. The cases need no debug info; cargo reads this variable in the
    // `cargo` processes trybuild starts (they inherit the environment).
    // SAFETY: this binary holds this one test, and nothing else runs while it is set.
    unsafe { std::env::set_var("CARGO_PROFILE_DEV_DEBUG", "0") };
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
    t.pass("ui/pass/*.rs");
}
