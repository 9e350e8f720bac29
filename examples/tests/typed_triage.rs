//! The typed-runs example binary, offline on its scripted backend: one ticket routed to the
//! billing team, one question answered by the drafter.

use std::process::Command;

#[test]
fn the_typed_example_routes_and_answers_offline() {
    let out = Command::new(env!("CARGO_BIN_EXE_typed_triage"))
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "example failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("Charged twice → billing team (state `routed`, priority 1, urgent: true)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "Export to CSV? → answered automatically (state `answered`, priority 3, urgent: false)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("reply: Yes: open a report"), "{stdout}");
    // The hook read the classifier's output as the generated struct.
    assert!(
        stderr.contains("classifier: Billing, urgent: true"),
        "{stderr}"
    );
    assert!(
        stderr.contains("classifier: Question, urgent: false"),
        "{stderr}"
    );
}
