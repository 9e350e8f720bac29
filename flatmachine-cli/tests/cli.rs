//! The `flatmachine` command line, run as a process on the repository's example machines (and
//! on the conformance corpus when `FLATMACHINE_CONFORMANCE_DIR` names it) and on checkpoint
//! directories (written by this runtime and by the Python reference).

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../flatmachine-build/tests/support/conformance.rs"]
mod conformance;

/// The example machines, where most CLI runs start.
fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/machines")
}

/// Example machines every tier of the checker accepts without a diagnostic.
const CLEAN: &[&str] = &[
    "distributed/echo_processor.yml",
    "distributed/job_worker.yml",
    "distributed/parallelization_checker.yml",
    "distributed/stale_worker_reaper.yml",
    "writer_critic/machine.yml",
];

/// Corpus machines every tier of the checker accepts without a diagnostic.
const CORPUS_STRICT: &[&str] = &[
    "distributed_worker/config/echo_processor.yml",
    "distributed_worker/config/job_worker.yml",
    "distributed_worker/config/parallelization_checker.yml",
    "distributed_worker/config/stale_worker_reaper.yml",
    "fixtures-helloworld/machine.yml",
];

// ---- the CLI --------------------------------------------------------------------------------

fn cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flatmachine"));
    c.current_dir(examples_dir());
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

/// `check` over files with no diagnostic: exit 0 and a clean summary line per file.
fn check_clean(dir: &Path, files: &[&str]) {
    let (code, _, stderr) = run(Command::new(env!("CARGO_BIN_EXE_flatmachine"))
        .current_dir(dir)
        .arg("check")
        .arg("--color=false")
        .args(files));
    assert_eq!(code, 0, "{stderr}");
    for rel in files {
        assert!(
            stderr.contains(&format!("{rel}: 0 error(s), 0 warning(s)")),
            "{stderr}"
        );
    }
}

#[test]
fn cli_check_clean_examples_succeeds() {
    check_clean(&examples_dir(), CLEAN);
}

#[test]
fn cli_check_corpus_strict_tier_succeeds() {
    if let Some(corpus) = conformance::corpus_dir("cli::cli_check_corpus_strict_tier_succeeds") {
        check_clean(&corpus, CORPUS_STRICT);
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
    let (code, stdout, stderr) =
        run(cli().args(["graph", "--format", "dot", "distributed/job_worker.yml"]));
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
    // State kinds, and the child machine as a cluster linked from the state that runs it.
    assert!(
        stdout.contains("s1 [label=\"register_worker\\naction: register_worker\", shape=box];"),
        "{stdout}"
    );
    assert!(
        stdout.contains("s3 [label=\"process_job\\nmachine: echo_processor\", shape=box3d];"),
        "{stdout}"
    );
    assert!(
        stdout.contains("subgraph cluster_m1 {\n        label=\"machine: echo_processor\";"),
        "{stdout}"
    );
    assert!(
        stdout.contains("s3 -> m1_s0 [label=\"runs\", style=dotted, arrowhead=empty];"),
        "{stdout}"
    );
}

#[test]
fn cli_graph_mermaid_uses_dotted_error_routes() {
    let (code, stdout, stderr) =
        run(cli().args(["graph", "--format", "mermaid", "distributed/job_worker.yml"]));
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
        "../../tests/ui/machines/two_initial_states.yml",
    ]));
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(stderr.contains("more than one initial state"), "{stderr}");
}

#[test]
fn cli_expand_prints_parsable_rust() {
    for rel in CLEAN {
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
fn inspect_tree_puts_a_launched_child_under_its_parent() {
    let (code, stdout, stderr) = inspect(&["--tree"], &python_checkpoints());
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("python-demo  inspect_demo  finished (step 4)"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("  └ 5b089af5-a941-4cd1-8d01-ccc59801c932  "),
        "{stdout}"
    );
    let (code, stdout, stderr) =
        inspect(&["python-demo", "--tree", "--json"], &python_checkpoints());
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["parent_execution_id"], "python-demo");
    assert_eq!(runs[1]["depth"], 1);
    assert_eq!(runs[0]["fate"]["kind"], "finished");
    let (code, _, stderr) = inspect(&["nope", "--tree"], &python_checkpoints());
    assert_eq!(code, 1);
    assert!(
        stderr.contains("execution `nope` has no checkpoints"),
        "{stderr}"
    );
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

// ---- signal send, waiting, fork ------------------------------------------------------------

/// A run the Python reference 4.2.1 parked in `wait_decision` on `approval/py`, saved into a
/// SQLite checkpoint file at `db`.
fn park_a_reference_run(db: &Path) {
    let text = r#"{"execution_id": "py-wait", "machine_name": "approval", "spec_version": "4.2.1", "current_state": "wait_decision", "context": {"ticket": "py", "machine": {"execution_id": "py-wait", "step": 2}}, "step": 2, "created_at": "2026-11-24T19:15:37.123456+00:00", "event": "waiting", "output": null, "total_api_calls": 0, "total_cost": 0.0, "parent_execution_id": null, "pending_launches": null, "waiting_channel": "approval/py", "tool_loop_state": null}"#;
    let snap = flatmachine_runtime::persistence::MachineSnapshot::from_json_slice(text.as_bytes())
        .unwrap();
    let store = flatmachine_runtime::persistence::CheckpointStore::sqlite(db).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(store.save(snap))
        .unwrap();
}

fn flatmachine_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_flatmachine"))
        .args(args)
        .current_dir(dir))
}

#[test]
fn signal_send_waiting_and_fork_work_on_a_sqlite_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    park_a_reference_run(&d.join("app.sqlite"));

    // `waiting` lists the run from its checkpoint; the signal store does not know it yet.
    let (code, out, err) = flatmachine_in(
        d,
        &[
            "waiting",
            "--dir",
            "sqlite:app.sqlite",
            "--signals",
            "sqlite:app.sqlite",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let runs: serde_json::Value = serde_json::from_str(&out).expect("waiting --json is JSON");
    let text = runs.to_string();
    assert!(
        text.contains("py-wait") && text.contains("approval/py"),
        "{text}"
    );

    // `signal send` stores a signal (data inline or from a file) in order.
    let (code, out, err) = flatmachine_in(
        d,
        &[
            "signal",
            "send",
            "approval/py",
            "--signals",
            "sqlite:app.sqlite",
            "--data",
            r#"{"decision": "approve", "by": "cli"}"#,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let sent: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sent["channel"], "approval/py");
    std::fs::write(d.join("second.json"), r#"{"decision": "reject"}"#).unwrap();
    let (code, _, err) = flatmachine_in(
        d,
        &[
            "signal",
            "send",
            "approval/py",
            "--signals",
            "sqlite:app.sqlite",
            "--data",
            "@second.json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let signals =
        flatmachine_runtime::signals::SqliteSignalBackend::open(d.join("app.sqlite")).unwrap();
    let pending = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(flatmachine_runtime::signals::SignalBackend::peek(
            &signals,
            "approval/py",
        ))
        .unwrap();
    let data: Vec<_> = pending.iter().map(|s| s.data.clone()).collect();
    assert_eq!(
        data,
        vec![
            serde_json::json!({"decision": "approve", "by": "cli"}),
            serde_json::json!({"decision": "reject"})
        ]
    );

    // Bad input is refused with a reason, and nothing is stored.
    let (code, _, err) = flatmachine_in(
        d,
        &[
            "signal",
            "send",
            "approval/py",
            "--signals",
            "sqlite:app.sqlite",
            "--data",
            "{nope",
        ],
    );
    assert_ne!(code, 0);
    assert!(!err.trim().is_empty());
    let (code, _, err) =
        flatmachine_in(d, &["signal", "send", "", "--signals", "sqlite:app.sqlite"]);
    assert_ne!(code, 0);
    assert!(err.contains("empty"), "{err}");

    // `fork` makes a new execution from the waiting checkpoint, with an edited context.
    let (code, _, err) = flatmachine_in(
        d,
        &[
            "fork",
            "py-wait",
            "--dir",
            "sqlite:app.sqlite",
            "--set",
            r#"ticket="two""#,
            "--id",
            "py-fork",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let store =
        flatmachine_runtime::persistence::CheckpointStore::sqlite(d.join("app.sqlite")).unwrap();
    let fork = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(store.load_latest("py-fork"))
        .unwrap()
        .expect("the fork is stored");
    assert_eq!(fork.context["ticket"], serde_json::json!("two"));
    assert_eq!(fork.event.as_deref(), Some("execute"));
    assert_eq!(fork.waiting_channel, None);
    let origin = fork.forked_from.expect("the fork records its origin");
    assert_eq!((origin.execution_id.as_str(), origin.step), ("py-wait", 2));
}

/// `inspect` in a directory, without `--dir`.
fn inspect_here(args: &[&str], cwd: &Path) -> (i32, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_flatmachine"))
        .current_dir(cwd)
        .arg("inspect")
        .args(args))
}

#[test]
fn inspect_without_dir_finds_the_stores_a_run_uses_or_says_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing there: an error naming both places.
    let (code, stdout, stderr) = inspect_here(&[], tmp.path());
    assert_eq!(code, 1, "{stdout}");
    assert!(stderr.contains("no checkpoint store here"), "{stderr}");
    assert!(
        stderr.contains(".checkpoints/") && stderr.contains(".checkpoints/checkpoints.sqlite"),
        "{stderr}"
    );
    // `backend: sqlite` keeps `.checkpoints/checkpoints.sqlite`: found and read.
    let db = tmp.path().join(".checkpoints/checkpoints.sqlite");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let (code, _, stderr) = convert(
        python_checkpoints().to_str().unwrap(),
        &format!("sqlite:{}", db.display()),
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = inspect_here(&[], tmp.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("python-demo  inspect_demo"), "{stdout}");
    assert!(
        stderr.contains("executions from sqlite:.checkpoints/checkpoints.sqlite"),
        "{stderr}"
    );
    assert!(stderr.contains(".checkpoints: no executions"), "{stderr}");
    let (code, stdout, stderr) = inspect_here(&["python-demo"], tmp.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("execution python-demo"), "{stdout}");
    // With files in `.checkpoints/` too, both are listed under their names; JSON is one object.
    copy_dir(&python_checkpoints(), &tmp.path().join(".checkpoints"));
    let (code, stdout, stderr) = inspect_here(&[], tmp.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("== .checkpoints\n"), "{stdout}");
    assert!(
        stdout.contains("== sqlite:.checkpoints/checkpoints.sqlite\n"),
        "{stdout}"
    );
    let (code, stdout, stderr) = inspect_here(&["--json"], tmp.path());
    assert_eq!(code, 0, "{stderr}");
    let all: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(all[".checkpoints"].is_array(), "{stdout}");
    assert!(
        all["sqlite:.checkpoints/checkpoints.sqlite"].is_array(),
        "{stdout}"
    );
    // An execution in neither store.
    let (code, _, stderr) = inspect_here(&["nope"], tmp.path());
    assert_eq!(code, 1);
    assert!(stderr.contains("execution `nope` has no checkpoints in .checkpoints or sqlite:.checkpoints/checkpoints.sqlite"), "{stderr}");
}
