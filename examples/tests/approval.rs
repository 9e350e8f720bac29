//! The approval example end to end, as the README runs it: every step a separate process of
//! the `approval` binary sharing `approval.sqlite` in one directory (offline writer).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_approval");

fn app(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .expect("run the approval binary");
    assert!(
        out.status.success(),
        "approval {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn a_post_is_drafted_waits_for_people_and_is_revised_then_published() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = r#"{"post_id": "launch-42", "topic": "Flatmachine 2.0"}"#;
    let run = app(d, &["run", "--input", input, "--execution-id", "post-1"]);
    // Waiting is no failure: `null` on stdout, what it waits for on stderr.
    assert_eq!(stdout_json(&run), Value::Null);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("waits for a signal on `review/launch-42`"),
        "{stderr}"
    );
    assert!(stderr.contains(r#""status":"waiting""#), "{stderr}");

    let waiting = String::from_utf8_lossy(&app(d, &["waiting"]).stdout).into_owned();
    assert!(waiting.contains("post-1"), "{waiting}");
    assert!(waiting.contains("review/launch-42"), "{waiting}");

    // A reviewer asks for changes: the run drafts again and waits again.
    app(
        d,
        &[
            "signal",
            "send",
            "review/launch-42",
            "--data",
            r#"{"decision": "revise", "feedback": "shorter please", "by": "ana"}"#,
        ],
    );
    let round = stdout_json(&app(d, &["dispatch", "--once"]));
    assert_eq!(round["delivered"], json!(1));
    assert_eq!(round["runs"][0]["execution_id"], json!("post-1"));
    assert_eq!(round["runs"][0]["status"], json!("waiting"));
    assert_eq!(round["runs"][0]["channel"], json!("review/launch-42"));

    // Approved: published.
    app(
        d,
        &[
            "signal",
            "send",
            "review/launch-42",
            "--data",
            r#"{"decision": "approve", "by": "ana"}"#,
        ],
    );
    let round = stdout_json(&app(d, &["dispatch", "--once"]));
    let done = &round["runs"][0];
    assert_eq!(done["status"], json!("finished"));
    assert_eq!(done["final_state"], json!("published"));
    assert_eq!(done["output"]["approved_by"], json!("ana"));
    assert_eq!(done["output"]["revisions"], json!(1));
    assert_eq!(done["output"]["title"], json!("Flatmachine 2.0: out now"));
    let post = std::fs::read_to_string(d.join("published/launch-42.md")).unwrap();
    assert!(post.starts_with("# Flatmachine 2.0: out now"), "{post}");
    let waiting = String::from_utf8_lossy(&app(d, &["waiting"]).stdout).into_owned();
    assert!(waiting.contains("no run waits"), "{waiting}");

    // The history shows the fingerprint and both waits.
    let history = String::from_utf8_lossy(&app(d, &["inspect", "post-1"]).stdout).into_owned();
    assert!(history.contains("shape fm-shape1:"), "{history}");
    assert_eq!(
        history.matches("waiting on review/launch-42").count(),
        2,
        "{history}"
    );

    // A fork from the first draft, for another post: it drafts and waits on its own channel.
    let fork = app(
        d,
        &[
            "fork",
            "post-1",
            "--step",
            "1",
            "--set",
            "post_id=\"launch-43\"",
            "--id",
            "post-2",
        ],
    );
    assert_eq!(stdout_json(&fork), Value::Null);
    let stderr = String::from_utf8_lossy(&fork.stderr);
    assert!(
        stderr.contains("forked execution post-2 from post-1 at step 1"),
        "{stderr}"
    );
    assert!(stderr.contains("review/launch-43"), "{stderr}");
}
