//! Compiles `machines/order.yml` with `flatmachine_build::Builder` into `OUT_DIR`, so the tests
//! can check that the build.rs route and the `flatmachine!` macro give the same machine.
//!
//! When `FLATMACHINE_CONFORMANCE_DIR` names the conformance corpus, also compiles the corpus
//! machines the agent tests run (into `OUT_DIR/corpus/`) and sets `cfg(flatmachine_corpus)`;
//! without it those tests are left out and a cargo warning says so.

use std::path::{Path, PathBuf};

/// Corpus machines run end to end by `tests/agents.rs` and `tests/agents_corpus.rs`.
const CORPUS_MACHINES: &[&str] = &[
    "writer_critic/config/machine.yml",
    "mdap/config/machine.yml",
    "character_card/config/machine.yml",
];

fn main() {
    if let Err(e) = flatmachine_build::Builder::new()
        .machine("machines/order.yml")
        .compile()
    {
        panic!("{e}");
    }
    println!("cargo::rustc-check-cfg=cfg(flatmachine_corpus)");
    println!("cargo::rerun-if-env-changed=FLATMACHINE_CONFORMANCE_DIR");
    let Some(dir) = std::env::var_os("FLATMACHINE_CONFORMANCE_DIR").filter(|d| !d.is_empty())
    else {
        println!(
            "cargo::warning=FLATMACHINE_CONFORMANCE_DIR is not set: the agent tests over the \
             conformance corpus are left out (in-repository machines cover the same features)"
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let corpus = root.join(PathBuf::from(dir)).join("corpus");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("corpus");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/corpus");
    let machines: Vec<PathBuf> = CORPUS_MACHINES.iter().map(|m| corpus.join(m)).collect();
    if let Err(e) = flatmachine_build::Builder::new()
        .machines(&machines)
        .out_dir(&out)
        .cargo_warnings(false)
        .compile()
    {
        panic!("{e}");
    }
    println!("cargo::rustc-cfg=flatmachine_corpus");
}
