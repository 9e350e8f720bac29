//! The writer/critic example binary: offline on its scripted backend, and online against a
//! loopback server speaking the OpenAI chat completions JSON (the same path a real key takes).

use flatmachine_tests::loopback_llm::{LoopbackLlm, Received, openai_reply};
use serde_json::{Value, json};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_writer_critic");

/// Runs the example with `envs`; (exit success, stdout JSON, stderr).
fn run_status(envs: &[(&str, String)]) -> (bool, Value, String) {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_BASE")
        .env_remove("OPENAI_MODEL")
        .env_remove("FLATMACHINE_BASE_URL");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the example");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        serde_json::from_str(&stdout).expect("JSON on stdout"),
        stderr,
    )
}

fn run(envs: &[(&str, String)]) -> (Value, String) {
    let (ok, output, stderr) = run_status(envs);
    assert!(ok, "example failed: {stderr}");
    (output, stderr)
}

/// Issue 18 #10: with only `OPENAI_BASE_URL` set (a local server that needs no key) the run
/// works and sends no `Authorization` header.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_server_needs_no_key() {
    let server = LoopbackLlm::start(|req: &Received| {
        if req.system().contains("You write") {
            openai_reply("Steam that outlasts your day.", 50, 8)
        } else {
            openai_reply("{\"score\": 9, \"feedback\": \"Great.\"}", 60, 10)
        }
    })
    .await;
    let base = server.openai_base();
    let (output, _) = tokio::task::spawn_blocking(move || run(&[("OPENAI_BASE_URL", base)]))
        .await
        .unwrap();
    assert_eq!(output["score"], 9);
    let received = server.received();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|r| r.header("authorization").is_none()));
}

/// Issue 18 #10: a run that ends in the `failed` state prints its output and exits non-zero.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_run_exits_non_zero() {
    let server = LoopbackLlm::start(|req: &Received| {
        if req.system().contains("You write") {
            openai_reply("Steam that outlasts your day.", 50, 8)
        } else {
            openai_reply("no JSON here", 60, 10)
        }
    })
    .await;
    let base = server.openai_base();
    let (ok, output, stderr) =
        tokio::task::spawn_blocking(move || run_status(&[("OPENAI_BASE_URL", base)]))
            .await
            .unwrap();
    assert!(!ok, "{stderr}");
    assert_eq!(output["error_type"], "OutputParseError");
    assert!(stderr.contains("run failed in state `failed`"), "{stderr}");
    // The rejected reply was still a billed call: writer + critic.
    assert!(stderr.contains("agent calls: 2"), "{stderr}");
}

#[test]
fn runs_offline_with_no_key() {
    let (output, stderr) = run(&[]);
    assert_eq!(
        output,
        json!({"tagline": "Sunrise to sunset, still steaming.", "score": 9, "rounds": 2})
    );
    assert!(stderr.contains("backend: scripted"), "{stderr}");
    assert!(stderr.contains("agent calls: 4"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_online_against_an_openai_compatible_server() {
    let server = LoopbackLlm::start(|req: &Received| {
        if req.system().contains("You write") {
            openai_reply("Steam that outlasts your day.", 50, 8)
        } else {
            openai_reply("{\"score\": 9, \"feedback\": \"Great.\"}", 60, 10)
        }
    })
    .await;
    let base = server.openai_base();
    let (output, stderr) = tokio::task::spawn_blocking(move || {
        run(&[
            ("OPENAI_BASE_URL", base),
            ("OPENAI_API_KEY", "sk-test-not-a-real-key".into()),
            ("OPENAI_MODEL", "local-model".into()),
        ])
    })
    .await
    .unwrap();
    assert_eq!(
        output,
        json!({"tagline": "Steam that outlasts your day.", "score": 9, "rounds": 1})
    );
    assert!(
        !stderr.contains("sk-test-not-a-real-key"),
        "the key leaked: {stderr}"
    );
    let received = server.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].header("authorization"),
        Some("Bearer sk-test-not-a-real-key")
    );
    assert_eq!(received[0].body["model"], "local-model");
    assert_eq!(received[0].body["temperature"], 0.9);
    assert_eq!(received[1].body["temperature"], 0.2);
    assert!(
        received[0]
            .message("user")
            .ends_with("\n\nAnswer with the tagline only, no quotes.")
    );
}
