//! The `flatmachine` command line, run as a process on the conformance corpus and on
//! checkpoint directories (written by this runtime and by the Python reference).

use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/corpus");
    assert!(
        dir.join("MANIFEST.tsv").is_file(),
        "conformance corpus not found at {} (expected `shared/conformance/corpus/MANIFEST.tsv` \
         beside the repository checkout)",
        dir.display()
    );
    dir
}

/// Machines every tier of the checker accepts without a diagnostic.
const STRICT: &[&str] = &[
    "distributed_worker/config/echo_processor.yml",
    "distributed_worker/config/job_worker.yml",
    "distributed_worker/config/parallelization_checker.yml",
    "distributed_worker/config/stale_worker_reaper.yml",
    "fixtures-helloworld/machine.yml",
];

// ---- the CLI --------------------------------------------------------------------------------

fn cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flatmachine"));
    c.current_dir(corpus_dir());
    c
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run flatmachine");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_check_strict_tier_succeeds() {
    let (code, _, stderr) = run(cli().arg("check").arg("--color=false").args(STRICT));
    assert_eq!(code, 0, "{stderr}");
    for rel in STRICT {
        assert!(
            stderr.contains(&format!("{rel}: 0 error(s), 0 warning(s)")),
            "{stderr}"
        );
    }
}

#[test]
fn cli_check_reports_a_misspelt_state() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("typo.yml");
    std::fs::write(
        &m,
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: typo\n  states:\n    start:\n      type: initial\n      transitions:\n        - to: reviw\n    review:\n      type: final\n",
    )
    .unwrap();
    let (code, _, stderr) = run(Command::new(env!("CARGO_BIN_EXE_flatmachine"))
        .current_dir(tmp.path())
        .args(["check", "--color=false", "typo.yml"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(" --> typo.yml:9:15"), "{stderr}");
    assert!(stderr.contains("did you mean `review`?"), "{stderr}");
    assert!(
        stderr.contains("error: transition to unknown state `reviw`"),
        "{stderr}"
    );
    assert!(stderr.contains("typo.yml: 1 error(s)"), "{stderr}");
}

#[test]
fn cli_check_fails_on_a_missing_file() {
    let (code, _, stderr) = run(cli().args(["check", "--color=false", "no/such/machine.yml"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("file not found"), "{stderr}");
}

#[test]
fn cli_graph_dot_dashes_error_routes() {
    let (code, stdout, stderr) = run(cli().args([
        "graph",
        "--format",
        "dot",
        "distributed_worker/config/job_worker.yml",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("digraph \"job_worker\" {"), "{stdout}");
    assert!(stdout.trim_end().ends_with('}'), "{stdout}");
    // process_job (s3) --on_error--> job_failed (s5), whatever its label says.
    let error_route: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("style=dashed"))
        .collect();
    assert_eq!(error_route.len(), 1, "{stdout}");
    assert!(
        error_route[0].trim_start().starts_with("s3 -> s5 ["),
        "{stdout}"
    );
    assert!(stdout.contains("s9 [label=\"done\", shape=doublecircle];"));
    assert!(stdout.contains("s2 -> s7 [label=\"context.job == None\"];"));
}

#[test]
fn cli_graph_mermaid_uses_dotted_error_routes() {
    let (code, stdout, stderr) = run(cli().args([
        "graph",
        "--format",
        "mermaid",
        "distributed_worker/config/job_worker.yml",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("flowchart"), "{stdout}");
    let error_route: Vec<&str> = stdout.lines().filter(|l| l.contains("-.->")).collect();
    assert_eq!(error_route.len(), 1, "{stdout}");
    let route = error_route[0].trim();
    assert!(
        route.starts_with("s3 -.->") && route.ends_with(" s5"),
        "{stdout}"
    );
    assert!(stdout.contains("s0 --> s1"), "{stdout}");
}

#[test]
fn cli_graph_fails_on_errors() {
    let (code, stdout, stderr) = run(cli().args([
        "graph",
        "--format",
        "dot",
        "fixtures-human-in-the-loop/machine.yml",
    ]));
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(stderr.contains("more than one initial state"), "{stderr}");
}

#[test]
fn cli_expand_prints_parsable_rust() {
    for rel in STRICT {
        let (code, stdout, stderr) = run(cli().args(["expand", rel]));
        assert_eq!(code, 0, "{rel}: {stderr}");
        let file = syn::parse_file(&stdout)
            .unwrap_or_else(|e| panic!("`flatmachine expand {rel}` is not Rust: {e}"));
        assert_eq!(file.items.len(), 1, "{rel}: one module expected");
        assert!(
            matches!(&file.items[0], syn::Item::Mod(_)),
            "{rel}: expected a module"
        );
    }
}

#[test]
fn cli_schema_prints_json_schemas() {
    for kind in ["machine", "agent", "profiles"] {
        let (code, stdout, stderr) = run(cli().args(["schema", kind]));
        assert_eq!(code, 0, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("schema {kind} is not JSON: {e}"));
        let props = v["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {kind} has no properties"));
        for key in ["spec", "spec_version", "data"] {
            assert!(props.contains_key(key), "schema {kind} lacks `{key}`");
        }
    }
    let (code, stdout, _) = run(cli().arg("schema"));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["title"], "MachineWrapper");
}

// ---- inspect --------------------------------------------------------------------------------

/// Checkpoints written by the Python reference (`tests/fixtures/python_checkpoints/generate.py`).
fn python_checkpoints() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/python_checkpoints/checkpoints")
}

fn inspect(args: &[&str], dir: &Path) -> (i32, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_flatmachine"))
        .arg("inspect")
        .args(args)
        .arg("--dir")
        .arg(dir))
}

#[test]
fn inspect_reads_a_python_written_execution_as_a_table() {
    let (code, stdout, stderr) = inspect(&["python-demo"], &python_checkpoints());
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("execution python-demo  machine inspect_demo"),
        "{stdout}"
    );
    assert!(lines[0].ends_with("latest python-demo/step_000004_machine_end.json"));
    // Header + 13 checkpoints, each row starting with its step.
    let rows: Vec<&str> = lines[2..]
        .iter()
        .copied()
        .filter(|l| !l.starts_with("      "))
        .collect();
    assert_eq!(rows.len(), 13, "{stdout}");
    assert!(rows[0].contains("machine_start") && rows[0].contains("+order=\"A-17\""));
    let failed = rows
        .iter()
        .find(|r| r.contains("RuntimeError: card declined"))
        .expect("the routed error is shown");
    assert!(
        failed.contains("state_enter") && failed.contains("declined"),
        "{failed}"
    );
    assert!(stdout.contains("~attempts=1"), "{stdout}");
    // The launch outbox is shown once, where it appears.
    assert_eq!(stdout.matches("launch notifier (").count(), 1, "{stdout}");
    assert!(
        stdout.contains("started input {\"order\":\"A-17\"}"),
        "{stdout}"
    );
    assert!(stdout.contains("output {\"order\":\"A-17\",\"attempts\":1}"));
}

#[test]
fn inspect_json_describes_every_checkpoint() {
    let (code, stdout, stderr) = inspect(&["python-demo", "--json"], &python_checkpoints());
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["execution_id"], "python-demo");
    assert_eq!(v["machine_name"], "inspect_demo");
    let checkpoints = v["checkpoints"].as_array().unwrap();
    assert_eq!(checkpoints.len(), 13);
    let steps: Vec<(u64, &str)> = checkpoints
        .iter()
        .map(|c| (c["step"].as_u64().unwrap(), c["event"].as_str().unwrap()))
        .collect();
    assert_eq!(steps[0], (0, "machine_start"));
    assert_eq!(steps[12], (4, "machine_end"));
    let mut sorted = steps.clone();
    sorted.sort_by_key(|(step, _)| *step);
    assert_eq!(steps, sorted, "run order");
    let errors: Vec<&serde_json::Value> = checkpoints
        .iter()
        .filter(|c| !c["error"].is_null())
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["error"]["error_type"], "RuntimeError");
    assert_eq!(errors[0]["changes"]["added"]["charged"], false);
    let launched = &checkpoints[8]["pending_launches"][0];
    assert_eq!(launched["machine"], "notifier");
    assert_eq!(launched["launched"], true);
    assert_eq!(checkpoints[12]["output"]["attempts"], 1);
}

#[test]
fn inspect_lists_executions_and_survives_a_corrupt_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&python_checkpoints(), tmp.path());
    let (code, stdout, stderr) = inspect(&[], tmp.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("python-demo  inspect_demo  step 4  machine_end  end"),
        "{stdout}"
    );
    // A damaged checkpoint is reported in its row; the others are still shown.
    let broken = tmp.path().join("python-demo/step_000002_execute.json");
    std::fs::write(&broken, b"{\"execution_id\": \"python-de").unwrap();
    let (code, stdout, stderr) = inspect(&["python-demo"], tmp.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("unreadable: corrupt checkpoint"),
        "{stdout}"
    );
    assert!(stdout.contains("machine_end"), "{stdout}");
}

#[test]
fn inspect_reports_unknown_executions_and_directories() {
    let (code, stdout, stderr) = inspect(&["no-such-run"], &python_checkpoints());
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("execution `no-such-run` has no checkpoints"),
        "{stderr}"
    );
    let (code, _, stderr) = inspect(&["../escape"], &python_checkpoints());
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid checkpoint key"), "{stderr}");
    let (code, _, stderr) = inspect(&[], Path::new("/no/such/dir"));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("checkpoint directory /no/such/dir not found"),
        "{stderr}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

// ---- convert --------------------------------------------------------------------------------

fn convert(from: &str, to: &str) -> (i32, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_flatmachine"))
        .args(["convert", "--from", from, "--to", to]))
}

/// Every file below `root` (checksum files aside), as relative path → bytes.
fn files(root: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.to_string_lossy().ends_with(".crc32") {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), bytes);
            }
        }
    }
    out
}

#[test]
fn convert_moves_python_checkpoints_to_sqlite_and_back_and_inspect_reads_both() {
    let tmp = tempfile::tempdir().unwrap();
    let source = python_checkpoints();
    let db = tmp.path().join("cp.sqlite");
    let sqlite = format!("sqlite:{}", db.display());
    let (code, stdout, stderr) = convert(source.to_str().unwrap(), &sqlite);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("copied "), "{stdout}");
    assert!(db.is_file());

    // inspect gives the same report from SQLite as from the files.
    let (code, from_files, stderr) = inspect(&["python-demo", "--json"], &source);
    assert_eq!(code, 0, "{stderr}");
    let (code, from_db, stderr) = run(Command::new(env!("CARGO_BIN_EXE_flatmachine")).args([
        "inspect",
        "python-demo",
        "--json",
        "--dir",
        &sqlite,
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(from_db, from_files);

    // Back to the reference layout: the same files, byte for byte.
    let back = tmp.path().join("back");
    let (code, _, stderr) = convert(&sqlite, back.to_str().unwrap());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(files(&back), files(&source));

    // Errors: a missing source, the same store twice.
    let (code, _, stderr) = convert("sqlite:/no/such.sqlite", back.to_str().unwrap());
    assert_eq!(code, 1);
    assert!(stderr.contains("/no/such.sqlite not found"), "{stderr}");
    let (code, _, stderr) = convert(&sqlite, &sqlite);
    assert_eq!(code, 1);
    assert!(stderr.contains("same store"), "{stderr}");
}

#[test]
fn cli_check_knows_rust_tools_given_with_tool() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("counter.yml"),
        "spec: flatagent\nspec_version: \"1.0.0\"\ndata:\n  name: counter\n  model: {provider: openai, name: m}\n  system: You count.\n  user: \"{{ input.q }}\"\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("counting.yml"),
        "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: counting\n  agents:\n    counter: ./counter.yml\n  states:\n    start:\n      type: initial\n      agent: counter\n      input: {q: hi}\n      tool_loop: {allowed_tools: [word_count]}\n      transitions:\n        - to: done\n    done:\n      type: final\n",
    )
    .unwrap();
    let check = |extra: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_flatmachine"))
            .current_dir(tmp.path())
            .args(["check", "--color=false"])
            .args(extra)
            .arg("counting.yml"))
    };
    let (code, _, stderr) = check(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("has no tools"), "{stderr}");
    let (code, _, stderr) = check(&["--tool", "word_count"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("counting.yml: 0 error(s)"), "{stderr}");
}
