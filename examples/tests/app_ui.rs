//! The `ui` command of an app binary on `cli::main` (`fm_app ui`): the console over the store
//! the app's machine is configured with, served by a real process and read over HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_fm_app");

/// Kills the console process when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on the console (HTTP/1.0: the body ends with the connection).
fn get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the console");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP response with a body");
    (head.to_string(), body.to_string())
}

#[test]
fn an_app_binary_serves_its_own_runs_in_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let run = Command::new(BIN)
        .args([
            "run",
            "--input",
            r#"{"job": "a"}"#,
            "--execution-id",
            "ui-1",
        ])
        .env("FLATMACHINE_EXAMPLE_DIR", dir.path())
        .output()
        .expect("run fm_app");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let mut console = Killed(
        Command::new(BIN)
            .args(["ui", "--port", "0"])
            .env("FLATMACHINE_EXAMPLE_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fm_app ui"),
    );
    // The console says where it listens on stderr: `console: http://127.0.0.1:PORT/ ...`.
    let stderr = console.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let port: u16 = loop {
        let line = lines
            .next()
            .expect("the console printed its address before exiting")
            .unwrap();
        if let Some(rest) = line.strip_prefix("console: http://127.0.0.1:") {
            break rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|p| p.parse().ok())
                .expect("a port in the console's address");
        }
    };

    let (head, body) = get(port, "/api/runs");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    let page: serde_json::Value = serde_json::from_str(&body).expect("the runs page is JSON");
    let runs = page["runs"].as_array().expect("a list of runs");
    let run = runs
        .iter()
        .find(|r| r["id"] == "ui-1")
        .unwrap_or_else(|| panic!("ui-1 is listed: {page}"));
    assert_eq!(run["status"], "finished", "{run}");
    assert_eq!(run["machine"], "launcher", "{run}");

    let (head, body) = get(port, "/api/runs/ui-1");
    assert!(head.contains(" 200"), "{head}");
    let detail: serde_json::Value = serde_json::from_str(&body).expect("the run is JSON");
    assert!(
        detail.to_string().contains("ui-1"),
        "the run's page names it: {detail}"
    );

    // Only loopback hosts are answered (a DNS-rebinding page would send its own name).
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET /api/runs HTTP/1.0\r\nHost: evil.example\r\n\r\n"
    )
    .unwrap();
    let mut refused = String::new();
    stream.read_to_string(&mut refused).unwrap();
    assert!(
        !refused.starts_with("HTTP/1.0 200") && !refused.starts_with("HTTP/1.1 200"),
        "{refused}"
    );
}

#[test]
fn an_app_binary_refuses_a_non_loopback_address_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["ui", "--port", "0", "--bind", "0.0.0.0"])
        .env("FLATMACHINE_EXAMPLE_DIR", dir.path())
        .output()
        .expect("run fm_app ui");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("allow-remote") || stderr.contains("allow_remote"),
        "{stderr}"
    );
}
