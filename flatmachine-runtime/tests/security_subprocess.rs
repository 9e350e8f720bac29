//! Hostile subprocess agents (issue 17, items 2, 3, 13): real child processes that flood
//! stdout, print before reading, leave background processes behind, or read secrets from
//! their environment. Each test runs the agent through a compiled machine.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flatmachine_runtime::Machine;
use flatmachine_runtime::agents::SubprocessAdapter;
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/security/sub_agent.yml");

/// Writes an executable `sh` script and returns its path.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn machine(adapter: SubprocessAdapter) -> Machine {
    Machine::of::<sub_agent::Machine>()
        .agent_adapter(Arc::new(adapter))
        .no_persistence()
        .build()
        .unwrap()
}

fn adapter(script: &Path) -> SubprocessAdapter {
    SubprocessAdapter::new("external").with_command([script.display().to_string()])
}

/// Whether process `pid` is gone (no entry, or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn read_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Item 2: an agent printing more than the cap (32 MiB by default) is killed and the call
/// fails with an error naming the limit, instead of buffering all of it.
#[tokio::test]
async fn subprocess_agent_flooding_stdout_is_cut_at_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let flood = script(dir.path(), "flood.sh", "head -c 40000000 /dev/zero");
    let r = machine(adapter(&flood))
        .run(json!({"payload": "x"}))
        .await
        .unwrap();
    assert_eq!(r.final_state, "failed", "{:?}", r.output);
    assert_eq!(r.output["error_type"], "AgentError");
    let message = r.output["error"].as_str().unwrap();
    assert!(
        message.contains("more than 33554432 bytes") && message.contains("killed"),
        "{message}"
    );
}

/// Item 2: `yes` never stops printing; a small configured cap ends the call quickly with the
/// error, and the process is gone.
#[tokio::test]
async fn subprocess_agent_printing_forever_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let yes = script(
        dir.path(),
        "yes.sh",
        &format!("echo $$ > {}\nexec yes", pid_file.display()),
    );
    let started = Instant::now();
    let r = machine(
        adapter(&yes)
            .with_max_output(1 << 20)
            .with_timeout(Duration::from_secs(60)),
    )
    .run(json!({"payload": "x"}))
    .await
    .unwrap();
    assert_eq!(r.output["error_type"], "AgentError", "{:?}", r.output);
    assert!(
        r.output["error"]
            .as_str()
            .unwrap()
            .contains("more than 1048576 bytes"),
        "{:?}",
        r.output
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(wait_gone(read_pid(&pid_file)), "`yes` survived the call");
}

/// Item 3: a program that writes 200 KB on stderr before reading a 300 KB request must not
/// deadlock (the request is written while stderr is drained).
#[tokio::test]
async fn subprocess_agent_printing_before_reading_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let agent = script(
        dir.path(),
        "chatty.sh",
        "head -c 200000 /dev/zero | tr '\\0' e >&2\n\
         n=$(wc -c)\n\
         echo \"{\\\"output\\\": {\\\"read\\\": $n}}\"",
    );
    let payload = "p".repeat(300_000);
    let started = Instant::now();
    let r = machine(adapter(&agent).with_timeout(Duration::from_secs(20)))
        .run(json!({ "payload": payload }))
        .await
        .unwrap();
    assert_eq!(r.final_state, "done", "{:?}", r.output);
    let read = r.output["reply"]["read"].as_u64().unwrap();
    assert!(read > 300_000, "the agent read {read} bytes");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// Item 3: a background process keeping stdout open neither holds the call until it exits
/// nor survives it.
#[tokio::test]
async fn subprocess_agent_background_grandchild_is_killed_with_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild");
    let agent = script(
        dir.path(),
        "bg.sh",
        &format!(
            "sleep 30 &\necho $! > {}\necho '{{\"output\": {{\"ok\": true}}}}'",
            pid_file.display()
        ),
    );
    let started = Instant::now();
    let r = machine(adapter(&agent).with_timeout(Duration::from_secs(20)))
        .run(json!({"payload": "x"}))
        .await
        .unwrap();
    assert_eq!(r.output, json!({"reply": {"ok": true}}));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the call waited for the background process: {:?}",
        started.elapsed()
    );
    assert!(
        wait_gone(read_pid(&pid_file)),
        "the background process survived"
    );
}

/// Item 3: on a timeout the whole process group goes, grandchildren included.
#[tokio::test]
async fn subprocess_agent_timeout_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild");
    let agent = script(
        dir.path(),
        "hang.sh",
        &format!("sleep 30 &\necho $! > {}\nwait", pid_file.display()),
    );
    let r = machine(adapter(&agent).with_timeout(Duration::from_millis(700)))
        .run(json!({"payload": "x"}))
        .await
        .unwrap();
    assert_eq!(r.output["error_type"], "TimeoutError", "{:?}", r.output);
    assert!(
        wait_gone(read_pid(&pid_file)),
        "the grandchild survived the timeout"
    );
}

/// Item 3: dropping a run mid-call (the caller gave up) kills the group too.
#[tokio::test]
async fn subprocess_agent_dropped_call_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild");
    let agent = script(
        dir.path(),
        "hang.sh",
        &format!("sleep 30 &\necho $! > {}\nwait", pid_file.display()),
    );
    let m = machine(adapter(&agent));
    let run = m.run(json!({"payload": "x"}));
    let _ = tokio::time::timeout(Duration::from_millis(700), run).await;
    assert!(
        wait_gone(read_pid(&pid_file)),
        "the grandchild survived the dropped call"
    );
}

/// Item 13: the agent sees PATH/HOME, what its config passes or sets, and nothing else of
/// this process's environment (cargo's variables stand in for secrets here).
#[tokio::test]
async fn subprocess_agent_gets_only_the_listed_environment() {
    assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
    assert!(std::env::var_os("CARGO_PKG_VERSION").is_some());
    let dir = tempfile::tempdir().unwrap();
    let agent = script(
        dir.path(),
        "env.sh",
        "cat > /dev/null\n\
         printf '{\"output\": {\"secret\": \"%s\", \"passed\": \"%s\", \"set\": \"%s\", \"path\": \"%s\", \"names\": \"%s\"}}' \
         \"${CARGO_PKG_NAME:-}\" \"${CARGO_PKG_VERSION:-}\" \"${FM_SET_BY_CONFIG:-}\" \"${PATH:+yes}\" \"$(env | grep -o '^[A-Za-z_][A-Za-z0-9_]*=' | tr -d '=' | tr '\\n' ' ')\"",
    );
    let r = machine(adapter(&agent))
        .run(json!({"payload": "x"}))
        .await
        .unwrap();
    let reply = &r.output["reply"];
    assert_eq!(reply["secret"], "", "{r:?}");
    assert_eq!(reply["passed"], env!("CARGO_PKG_VERSION"));
    assert_eq!(reply["set"], "from-config");
    assert_eq!(reply["path"], "yes");
    let allowed = [
        "PATH",
        "HOME",
        "LANG",
        "LANGUAGE",
        "CARGO_PKG_VERSION",
        "FM_SET_BY_CONFIG",
        // Set by the shell itself.
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ];
    let names = reply["names"].as_str().unwrap();
    for name in names.split_whitespace() {
        assert!(
            allowed.contains(&name) || name.starts_with("LC_"),
            "the agent saw `{name}` (all: {names})"
        );
    }

    // The opt-in: everything is inherited.
    let all =
        machine(adapter(&agent).with_env(flatmachine_runtime::process::ChildEnv::inherit_all()))
            .run(json!({"payload": "x"}))
            .await
            .unwrap();
    assert_eq!(all.output["reply"]["secret"], env!("CARGO_PKG_NAME"));
}

#[cfg(feature = "cli")]
mod invoker {
    use super::*;
    use flatmachine_runtime::cli::SubprocessInvoker;

    flatmachine_runtime::flatmachine!("tests/machines/security/invoke_parent.yml");

    /// A stand-in for an app binary built on `cli::main`: records its arguments, reads the
    /// input from stdin when told `--input -`, prints how many bytes it got.
    fn fake_app(dir: &Path) -> (PathBuf, PathBuf) {
        let argv = dir.join("argv");
        let app = script(
            dir,
            "app.sh",
            &format!(
                "printf '%s\\n' \"$@\" > {argv}\n\
                 last=''\nfor a in \"$@\"; do\n  if [ \"$last\" = --input ]; then input=\"$a\"; fi\n  last=\"$a\"\ndone\n\
                 if [ \"$input\" = - ]; then n=$(wc -c); else n=$(printf %s \"$input\" | wc -c); fi\n\
                 echo \"{{\\\"size\\\": $n}}\"",
                argv = argv.display()
            ),
        );
        (app, argv)
    }

    /// Item 11: a 200 KB input reaches the child (not as one argument, which the OS refuses
    /// past 128 KiB) and never shows on its command line.
    #[tokio::test]
    async fn child_machine_input_travels_on_stdin_not_argv() {
        let dir = tempfile::tempdir().unwrap();
        let (app, argv) = fake_app(dir.path());
        let blob = "s".repeat(200_000);
        let m = Machine::of::<invoke_parent::Machine>()
            .invoker(Arc::new(SubprocessInvoker::new(&app)))
            .no_persistence()
            .build()
            .unwrap();
        let r = m.run(json!({ "blob": blob })).await.unwrap();
        assert_eq!(r.final_state, "done", "{:?}", r.output);
        assert!(r.output["got"]["size"].as_u64().unwrap() > 200_000);
        let args = std::fs::read_to_string(&argv).unwrap();
        assert!(!args.contains("sss"), "the input is on the command line");
        assert!(args.len() < 1000, "{} bytes of arguments", args.len());
    }

    /// Issue 23: a streamed parent asks its child process for events (a token in the
    /// environment, events as lines on stderr). The child's lines are untrusted: garbage, a
    /// line without the token, events claiming the parent's execution or an execution outside
    /// the child's tree, names the child's machine does not have, and a 2 MiB line are dropped;
    /// the well-formed events of the child's own execution reach the parent's stream, tagged
    /// with the child's id and the parent's. An unstreamed parent passes no token.
    #[tokio::test]
    async fn a_child_process_events_are_checked_before_they_reach_the_parent_stream() {
        use flatmachine_runtime::RunOptions;
        use flatmachine_runtime::events::EventKind;
        use futures::StreamExt;

        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("token");
        let app = script(
            dir.path(),
            "events.sh",
            &format!(
                r#"T="$FLATMACHINE_EVENT_STREAM"
id=''; parent=''; last=''
for a in "$@"; do
  case "$last" in --execution-id) id="$a";; --parent-id) parent="$a";; esac
  last="$a"
done
cat > /dev/null
echo "${{T:-none}}" > {marker}
ev() {{
  printf '%s {{"execution_id":"%s","parent_execution_id":"%s","machine":"%s","at":1700000000000000000,"event":%s}}\n' "$T" "$1" "$2" "$3" "$4" >&2
}}
if [ -n "$T" ]; then
  ev "$id" "$parent" invoke_child '{{"type":"MachineStart","resumed":false}}'
  echo "$T this is not json" >&2
  echo "$T" >&2
  echo 'fm-event-00000000000000000000000000000000 {{"execution_id":"x"}}' >&2
  ev "$parent" "" invoke_parent '{{"type":"StateEnter","state":"done","step":9}}'
  ev "$id" "$parent" invoke_child '{{"type":"StateEnter","state":"nowhere","step":1}}'
  ev "$id" "$parent" invoke_parent '{{"type":"StateEnter","state":"start","step":1}}'
  ev stranger "$id" invoke_child '{{"type":"StateEnter","state":"start","step":1}}'
  ev grandchild "$id" invoke_parent '{{"type":"MachineStart","resumed":false}}'
  ev "$id" "$parent" invoke_child '{{"type":"CheckpointSaved","event":"bogus","state":"start","step":1,"latency_ns":0}}'
  {{ printf '%s {{"execution_id":"%s","parent_execution_id":"%s","machine":"invoke_child","at":0,"event":{{"type":"TokenDelta","text":"' "$T" "$id" "$parent"
     head -c 2097152 /dev/zero | tr '\0' a
     printf '"}}}}\n'; }} >&2
  ev "$id" "$parent" invoke_child '{{"type":"StateEnter","state":"start","step":1}}'
  ev "$id" "$parent" invoke_child '{{"type":"Transition","from":"start","to":"done"}}'
fi
echo "a log line" >&2
echo '{{"size": 7}}'
"#,
                marker = marker.display()
            ),
        );
        let m = Machine::of::<invoke_parent::Machine>()
            .invoker(Arc::new(SubprocessInvoker::new(&app)))
            .no_persistence()
            .build()
            .unwrap();

        // Unstreamed: no token, no event lines.
        let r = m.run(json!({"blob": "x"})).await.unwrap();
        assert_eq!(r.output["got"]["size"], 7, "{:?}", r.output);
        assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "none");

        let mut stream = m.stream(
            json!({"blob": "x"}),
            RunOptions::new().execution_id("root-sub"),
        );
        let mut seen = Vec::new();
        while let Some(e) = stream.next().await {
            seen.push(e);
        }
        let r = stream.result().await.unwrap();
        assert_eq!(r.output["got"]["size"], 7, "{:?}", r.output);
        let token = std::fs::read_to_string(&marker).unwrap();
        assert!(token.trim().starts_with("fm-event-"), "{token}");

        // Only the child's three well-formed events, tagged, between the parent's state
        // enter and exit.
        let child: Vec<_> = seen
            .iter()
            .filter(|e| &*e.execution_id != "root-sub")
            .collect();
        assert_eq!(child.len(), 3, "{child:#?}");
        for e in &child {
            assert_eq!(e.parent_execution_id.as_deref(), Some("root-sub"));
            assert_eq!(e.machine, "invoke_child");
            assert_eq!(
                e.at,
                std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
            );
        }
        assert_eq!(child[0].kind, EventKind::MachineStart { resumed: false });
        assert_eq!(
            child[1].kind,
            EventKind::StateEnter {
                state: "start",
                step: 1
            }
        );
        assert_eq!(
            child[2].kind,
            EventKind::Transition {
                from: "start",
                to: "done"
            }
        );
        let root: Vec<_> = seen
            .iter()
            .filter(|e| &*e.execution_id == "root-sub")
            .map(|e| &e.kind)
            .collect();
        assert!(
            !root.contains(&&EventKind::StateEnter {
                state: "done",
                step: 9
            }),
            "a forged parent event got through: {root:#?}"
        );
        let pos = |k: &EventKind| seen.iter().position(|e| &e.kind == k).unwrap();
        let enter = pos(&EventKind::StateEnter {
            state: "start",
            step: 1,
        });
        let exit = pos(&EventKind::StateExit {
            state: "start",
            step: 1,
        });
        let child_at = seen
            .iter()
            .position(|e| &*e.execution_id != "root-sub")
            .unwrap();
        assert!(enter < child_at && child_at < exit, "{seen:#?}");
    }

    /// Item 11: a child machine that never ends is killed after the invoker's timeout.
    #[tokio::test]
    async fn child_machine_call_has_its_own_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let app = script(
            dir.path(),
            "stuck.sh",
            &format!("sleep 30 &\necho $! > {}\nwait", pid_file.display()),
        );
        let m = Machine::of::<invoke_parent::Machine>()
            .invoker(Arc::new(
                SubprocessInvoker::new(&app).with_timeout(Duration::from_millis(700)),
            ))
            .no_persistence()
            .build()
            .unwrap();
        let started = Instant::now();
        let r = m.run(json!({"blob": "x"})).await.unwrap();
        assert_eq!(r.output["error_type"], "TimeoutError", "{:?}", r.output);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(wait_gone(read_pid(&pid_file)));
    }
}
