//! The `stream_tokens` example prints a streamed reply offline: the tokens on stdout, the
//! states and the call on stderr.

use std::process::Command;

#[test]
fn the_example_prints_the_reply_token_by_token_offline() {
    let out = Command::new(env!("CARGO_BIN_EXE_stream_tokens"))
        .arg("a lighthouse")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("The keeper of a lighthouse counted ships every night."),
        "{stdout}"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let tell = stderr.find("[step 2: tell]").expect("the agent's state");
    let done = stderr.find("[done: done]").expect("the end");
    assert!(tell < done, "{stderr}");
}
