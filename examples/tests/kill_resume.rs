//! The order-approval example: a process killed in the middle of a run, resumed from its disk
//! checkpoints, finishes with the output of an uninterrupted run.

use std::process::Command;

use flatmachine_examples::order_machine;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_order_approval");

fn order_input() -> serde_json::Value {
    json!({"order_id": "A-1001", "amount": 1250})
}

#[test]
fn the_example_binary_crashes_resumes_and_approves() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .env("FLATMACHINE_EXAMPLE_DIR", dir.path())
        .output()
        .expect("run order_approval");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "order_approval failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains(r#""status": "approved""#), "{stdout}");
    assert!(stdout.contains(r#""order_id": "A-1001""#), "{stdout}");
    assert!(
        stdout.contains("resumed and finished in `approved`"),
        "{stdout}"
    );
    // The child really crashed in charge_card.
    assert!(stderr.contains("simulating a crash"), "{stderr}");
    assert!(
        dir.path().join(".checkpoints").is_dir(),
        "checkpoints go below FLATMACHINE_EXAMPLE_DIR"
    );
}

#[tokio::test]
async fn a_killed_run_resumes_in_process_with_the_uninterrupted_output() {
    let dir = tempfile::tempdir().unwrap();
    let id = "order-killed";
    let status = Command::new(BIN)
        .args(["--crash", id])
        .env("FLATMACHINE_EXAMPLE_DIR", dir.path())
        .status()
        .expect("run order_approval --crash");
    assert_eq!(
        status.code(),
        Some(137),
        "the child exits inside charge_card"
    );

    let latest = std::fs::read_to_string(dir.path().join(".checkpoints").join(id).join("latest"))
        .expect("the killed run left a latest pointer");
    assert!(latest.ends_with("_execute.json"), "{latest}");

    let resumed = order_machine(false, dir.path())
        .build()
        .unwrap()
        .resume(id)
        .await
        .unwrap();

    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = order_machine(false, fresh_dir.path())
        .build()
        .unwrap()
        .run_with_id("order-fresh", order_input())
        .await
        .unwrap();

    assert_eq!(resumed.output, fresh.output);
    assert_eq!(resumed.final_state, "approved");
    assert_eq!(
        resumed.output,
        json!({
            "order_id": "A-1001",
            "status": "approved",
            "receipt": "rcpt-A-1001-1",
            "attempts": 1,
        })
    );
    // Resuming the finished execution again returns the stored output.
    let again = order_machine(false, dir.path())
        .build()
        .unwrap()
        .resume(id)
        .await
        .unwrap();
    assert_eq!(again.output, fresh.output);
}

/// SIGKILL (no cleanup, no unwinding) while the run is inside `charge_card`: the file lock dies
/// with the process, and the run resumes from the last checkpoint to the uninterrupted output.
#[tokio::test]
async fn a_sigkilled_process_resumes_to_the_uninterrupted_output() {
    let dir = tempfile::tempdir().unwrap();
    let id = "order-sigkilled";
    let mut child = Command::new(BIN)
        .args(["--hang", id])
        .env("FLATMACHINE_EXAMPLE_DIR", dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn order_approval --hang");
    // `charge` is the 4th state visited: wait until its `execute` checkpoint is on disk.
    let marker = dir
        .path()
        .join(".checkpoints")
        .join(id)
        .join("step_000004_execute.json");
    let started = std::time::Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the child never reached charge_card"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child exited early: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL the child");
    child.wait().unwrap();

    let machine = order_machine(false, dir.path()).build().unwrap();
    let resumed = machine.resume(id).await.expect("resume after SIGKILL");
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = order_machine(false, fresh_dir.path())
        .build()
        .unwrap()
        .run(order_input())
        .await
        .unwrap();
    assert_eq!(resumed.output, fresh.output);
    assert_eq!(resumed.final_state, "approved");
}
