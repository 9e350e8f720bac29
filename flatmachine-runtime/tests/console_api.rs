//! The console's JSON API (`flatmachine_runtime::console`) over real stores, through real
//! HTTP on a loopback port: runs listed a page at a time (100,000 of them in SQLite), one
//! run with its trace records (prompts, replies, errors and routes, children, graph), live
//! updates, and the one write — a signal — with its cross-site guards. The page itself is
//! driven in a browser by `console_browser.rs`.

mod console_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use console_common::*;
use flatmachine_runtime::console::{Console, ConsoleError, ConsoleOptions, TOKEN_HEADER};
use flatmachine_runtime::persistence::CheckpointStore;
use flatmachine_runtime::signals::{Dispatcher, SignalBackend, SqliteSignalBackend};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

flatmachine_runtime::flatmachine!("tests/machines/parent_launch.yml");

fn sqlite_signals(dir: &std::path::Path) -> Arc<dyn SignalBackend> {
    Arc::new(SqliteSignalBackend::open(dir.join("signals.sqlite")).unwrap())
}

/// The session token the page carries.
async fn token(console: &Running) -> String {
    let page = http(console.addr, "GET", "/", &[], None).await;
    assert_eq!(page.status, 200);
    let html = page.text();
    let marker = "name=\"flatmachine-token\" content=\"";
    let start = html.find(marker).unwrap() + marker.len();
    html[start..start + 64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_shows_its_prompts_replies_errors_children_and_graph() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path().join("cp"));
    let signals = sqlite_signals(dir.path());
    let machine = review_machine(&store, &signals, "Kettles <b>boil</b> water.");
    let result = machine
        .run_with_id("review-1", json!({"ticket": 7, "topic": "kettles"}))
        .await
        .unwrap();
    assert!(result.is_waiting());
    let console = start_console(&store, Some(signals)).await;

    let list = http(console.addr, "GET", "/api/runs", &[], None).await;
    assert_eq!(list.status, 200);
    assert!(list.header("access-control-allow-origin").is_none());
    assert!(list.header("content-security-policy").is_some());
    let list = list.json();
    let runs = list["runs"].as_array().unwrap();
    // The run and the child its `machine:` state started.
    assert_eq!(runs.len(), 2, "{list}");
    let run = runs.iter().find(|r| r["id"] == "review-1").unwrap();
    assert_eq!(run["status"], "waiting");
    assert_eq!(run["machine"], "review");
    assert_eq!(run["waiting_channel"], "review/7");
    assert_eq!(run["api_calls"], 1);
    assert!(run["started_at"].is_string());
    let child = runs.iter().find(|r| r["id"] != "review-1").unwrap();
    assert_eq!(child["status"], "finished");
    assert_eq!(child["parent"], "review-1");

    let detail = http(console.addr, "GET", "/api/runs/review-1", &[], None).await;
    assert_eq!(detail.status, 200);
    let d = detail.json();
    // The agent call: the rendered prompts, the reply, usage and latency.
    let calls = d["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call["state"], "draft");
    assert_eq!(call["agent"], "writer");
    assert_eq!(call["usage"]["input_tokens"], 12);
    assert_eq!(call["api_calls"], 1);
    let exchange = &call["exchanges"][0];
    assert_eq!(exchange["model"], "scripted-writer");
    assert_eq!(exchange["messages"][0]["role"], "system");
    assert_eq!(exchange["messages"][1]["content"], "Write about kettles.");
    assert_eq!(exchange["reply"]["content"], "Kettles <b>boil</b> water.");
    assert_eq!(exchange["reply"]["model"], "scripted-writer-1");
    assert!(exchange["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(call["output"]["content"], "Kettles <b>boil</b> water.");
    // The error and where on_error sent the run.
    let errors = d["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["kind"], "error");
    assert_eq!(errors[0]["state"], "check");
    assert_eq!(errors[0]["error"]["error_type"], "ValueError");
    assert_eq!(errors[0]["route"], "fix");
    // Children one way, the parent the other.
    let children = d["children"].as_array().unwrap();
    assert_eq!(children.len(), 1);
    assert_eq!(children[0]["relation"], "machine");
    assert_eq!(children[0]["state"], "helper_call");
    let child_id = children[0]["run"]["id"].as_str().unwrap().to_owned();
    assert_eq!(child_id, child["id"].as_str().unwrap());
    let child_detail = http(
        console.addr,
        "GET",
        &format!("/api/runs/{child_id}"),
        &[],
        None,
    )
    .await
    .json();
    assert_eq!(child_detail["parent"]["run"]["id"], "review-1");
    // The graph, the path taken, the timeline with context diffs.
    assert_eq!(d["graph"]["initial"], "start");
    assert_eq!(d["graph"]["states"].as_array().unwrap().len(), 8);
    let path: Vec<&str> = d["path"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[1].as_str().unwrap())
        .collect();
    assert_eq!(
        path,
        ["start", "draft", "check", "fix", "helper_call", "approve"]
    );
    let timeline = &d["timeline"];
    assert_eq!(
        timeline["total"].as_u64().unwrap() as usize,
        timeline["entries"].as_array().unwrap().len()
    );
    let drafted = timeline["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["changes"]["added"]["draft"].is_string())
        .unwrap();
    assert_eq!(drafted["state"], "draft");
    let last = timeline["entries"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["event"], "waiting");
    assert_eq!(last["waiting_channel"], "review/7");
    assert_eq!(d["signals"], true);

    let svg = http(
        console.addr,
        "GET",
        "/api/runs/review-1/graph.svg",
        &[],
        None,
    )
    .await;
    assert_eq!(svg.status, 200);
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    let svg = svg.text();
    assert!(svg.starts_with("<svg"));
    assert!(
        svg.contains(r#"class="state current visited" data-state="approve""#),
        "{svg}"
    );
    assert_eq!(svg.matches("class=\"edge taken\"").count(), 5);

    // A window of the timeline; ids that are not ids; unknown runs.
    let window = http(
        console.addr,
        "GET",
        "/api/runs/review-1/timeline?offset=2&limit=3",
        &[],
        None,
    )
    .await
    .json();
    assert_eq!(window["offset"], 2);
    assert_eq!(window["entries"].as_array().unwrap().len(), 3);
    assert_eq!(window["entries"][0]["index"], 2);
    let bad = http(console.addr, "GET", "/api/runs/..%2Fetc", &[], None).await;
    assert_eq!(bad.status, 400);
    let missing = http(console.addr, "GET", "/api/runs/nope", &[], None).await;
    assert_eq!(missing.status, 404);
    let bad_status = http(console.addr, "GET", "/api/runs?status=bogus", &[], None).await;
    assert_eq!(bad_status.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_loop_records_every_model_call() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::sqlite(dir.path().join("cp.sqlite")).unwrap();
    let machine = librarian_machine(&store);
    machine
        .run_with_id("lib-1", json!({"question": "kettle?"}))
        .await
        .unwrap();
    let console = start_console(&store, None).await;
    let d = http(console.addr, "GET", "/api/runs/lib-1", &[], None)
        .await
        .json();
    assert_eq!(d["run"]["status"], "finished");
    // The graph went to SQLite in the transaction of the run's first checkpoint.
    assert!(!d["graph"]["states"].as_array().unwrap().is_empty(), "{d}");
    let calls = d["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{d}");
    assert_eq!(calls[0]["tool_loop"], true);
    assert_eq!(calls[0]["api_calls"], 2);
    let exchanges = calls[0]["exchanges"].as_array().unwrap();
    assert_eq!(exchanges.len(), 2);
    assert_eq!(exchanges[0]["reply"]["tool_calls"][0]["name"], "lookup");
    assert_eq!(exchanges[0]["tools"], json!(["lookup"]));
    let tool_results: Vec<&str> = exchanges[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(tool_results, ["\"kettle\": a word", "\"pot\": a word"]);
    assert_eq!(exchanges[1]["reply"]["content"], "A kettle boils water.");
    assert_eq!(d["signals"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_listed_as_failed_and_filters_find_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    // A run that fails: `max_steps` reached.
    let machine = loop_machine(&store, None);
    let failed = machine
        .run_with(
            json!({"limit": 50}),
            flatmachine_runtime::RunOptions::new()
                .execution_id("fails")
                .max_steps(5),
        )
        .await;
    assert!(failed.is_err());
    loop_machine(&store, None)
        .run_with_id("finishes", json!({"limit": 3}))
        .await
        .unwrap();
    // One held at its first tick: running.
    let held = loop_machine(&store, Some(gate.clone()));
    let task = tokio::spawn(async move { held.run_with_id("held", json!({"limit": 2})).await });
    let console = start_console(&store, None).await;
    eventually(10, || async {
        http(console.addr, "GET", "/api/runs?status=running", &[], None)
            .await
            .json()["runs"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["id"] == "held")
    })
    .await;
    let failed = http(console.addr, "GET", "/api/runs?status=failed", &[], None)
        .await
        .json();
    assert_eq!(failed["runs"].as_array().unwrap().len(), 1);
    assert_eq!(failed["runs"][0]["id"], "fails");
    // A limit of the run is a MachineError whose message names it.
    assert_eq!(failed["runs"][0]["failure"]["error_type"], "MachineError");
    assert!(
        failed["runs"][0]["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("5"),
        "{failed}"
    );
    let d = http(console.addr, "GET", "/api/runs/fails", &[], None)
        .await
        .json();
    assert_eq!(d["errors"][0]["kind"], "failure");
    let found = http(console.addr, "GET", "/api/runs?q=FINISH", &[], None)
        .await
        .json();
    assert_eq!(found["runs"].as_array().unwrap().len(), 1);
    assert_eq!(found["runs"][0]["id"], "finishes");
    gate.add_permits(10);
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_arrive_as_server_sent_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let machine = loop_machine(&store, Some(gate.clone()));
    let task =
        tokio::spawn(async move { machine.run_with_id("live-1", json!({"limit": 3})).await });
    let console = start_console(&store, None).await;
    eventually(10, || async {
        http(console.addr, "GET", "/api/runs/live-1", &[], None)
            .await
            .status
            == 200
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(console.addr).await.unwrap();
    let request = format!(
        "GET /api/runs/live-1/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        console.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    // The first event says where the run is now.
    while seen.matches("event: update").count() < 1 {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("\"first\":true"), "{seen}");
    // The run moves on: another event arrives without asking.
    gate.add_permits(10);
    while seen.matches("event: update").count() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("\"first\":false"), "{seen}");
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_needs_the_token_and_the_same_origin_and_resumes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path().join("cp"));
    let signals = sqlite_signals(dir.path());
    let machine = review_machine(&store, &signals, "A draft.");
    machine
        .run_with_id("review-2", json!({"ticket": 9, "topic": "tea"}))
        .await
        .unwrap();
    let console = start_console(&store, Some(signals.clone())).await;
    let token = token(&console).await;
    let path = "/api/runs/review-2/signal";
    let body = br#"{"channel": "review/9", "data": {"decision": "approve"}}"#;
    let origin = format!("http://{}", console.addr);
    let json_type = ("Content-Type", "application/json");

    // No token, a wrong one, another origin, another site, another host, no JSON type.
    let refused = [
        vec![json_type],
        vec![json_type, (TOKEN_HEADER, "0000")],
        vec![
            json_type,
            (TOKEN_HEADER, token.as_str()),
            ("Origin", "http://evil.example"),
        ],
        vec![
            json_type,
            (TOKEN_HEADER, token.as_str()),
            ("Sec-Fetch-Site", "cross-site"),
        ],
    ];
    for headers in &refused {
        let reply = http(console.addr, "POST", path, headers, Some(body)).await;
        assert_eq!(reply.status, 403, "{headers:?}: {}", reply.text());
        assert!(reply.header("access-control-allow-origin").is_none());
    }
    let rebinding = http(
        console.addr,
        "POST",
        path,
        &[
            json_type,
            (TOKEN_HEADER, token.as_str()),
            ("Host", "evil.example:80"),
        ],
        Some(body),
    )
    .await;
    assert_eq!(rebinding.status, 421);
    let read_by_other_host = http(
        console.addr,
        "GET",
        "/api/runs",
        &[("Host", "evil.example")],
        None,
    )
    .await;
    assert_eq!(read_by_other_host.status, 421);
    let form = http(
        console.addr,
        "POST",
        path,
        &[
            ("Content-Type", "text/plain"),
            (TOKEN_HEADER, token.as_str()),
        ],
        Some(body),
    )
    .await;
    assert_eq!(form.status, 415);
    // A body over the limit; a channel the run does not wait on.
    let huge = vec![b'x'; 3 << 20];
    let too_big = http(
        console.addr,
        "POST",
        path,
        &[json_type, (TOKEN_HEADER, token.as_str())],
        Some(&huge),
    )
    .await;
    assert_eq!(too_big.status, 413);
    let wrong_channel = http(
        console.addr,
        "POST",
        path,
        &[json_type, (TOKEN_HEADER, token.as_str())],
        Some(br#"{"channel": "review/1", "data": {}}"#),
    )
    .await;
    assert_eq!(wrong_channel.status, 409);
    // Nothing was sent so far.
    assert_eq!(
        signals.waiters(None).await.unwrap()[0].delivered,
        None,
        "a refused request sent a signal"
    );

    let sent = http(
        console.addr,
        "POST",
        path,
        &[
            json_type,
            (TOKEN_HEADER, token.as_str()),
            ("Origin", origin.as_str()),
        ],
        Some(body),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    assert_eq!(sent.json()["channel"], "review/9");
    // A dispatcher delivers it: the run resumes and finishes approved.
    let report = Dispatcher::new(&machine).dispatch_once().await.unwrap();
    assert_eq!(report.resumed().count(), 1);
    let d = http(console.addr, "GET", "/api/runs/review-2", &[], None)
        .await
        .json();
    assert_eq!(d["run"]["status"], "finished");
    assert_eq!(
        d["path"]["steps"].as_array().unwrap().last().unwrap()[1],
        "published"
    );
    // A run that is not waiting takes no signal.
    let late = http(
        console.addr,
        "POST",
        path,
        &[json_type, (TOKEN_HEADER, token.as_str())],
        Some(body),
    )
    .await;
    assert_eq!(late.status, 409);
}

#[tokio::test]
async fn a_console_without_a_signal_store_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path().join("cp"));
    let signals = sqlite_signals(dir.path());
    review_machine(&store, &signals, "x")
        .run_with_id("r", json!({"ticket": 1, "topic": "t"}))
        .await
        .unwrap();
    let console = start_console(&store, None).await;
    let token = token(&console).await;
    let reply = http(
        console.addr,
        "POST",
        "/api/runs/r/signal",
        &[
            ("Content-Type", "application/json"),
            (TOKEN_HEADER, token.as_str()),
        ],
        Some(br#"{"channel": "review/1", "data": {}}"#),
    )
    .await;
    assert_eq!(reply.status, 409);
    assert!(reply.text().contains("--signals"));
    // No other method writes.
    for (method, path) in [
        ("PUT", "/api/runs/r"),
        ("DELETE", "/api/runs/r"),
        ("POST", "/api/runs"),
    ] {
        let reply = http(
            console.addr,
            method,
            path,
            &[(TOKEN_HEADER, token.as_str())],
            None,
        )
        .await;
        assert_eq!(reply.status, 405, "{method} {path}");
    }
}

#[tokio::test]
async fn non_loopback_addresses_are_refused_unless_allowed() {
    let mut options = ConsoleOptions::new(CheckpointStore::memory());
    options.addr = "0.0.0.0:0".parse().unwrap();
    let refused = Console::bind(options.clone()).await.unwrap_err();
    assert!(matches!(refused, ConsoleError::NotLoopback(_)), "{refused}");
    assert!(refused.to_string().contains("--allow-remote"));
    options.allow_remote = true;
    let console = Console::bind(options).await.unwrap();
    assert_eq!(console.local_addr().ip().to_string(), "0.0.0.0");
}

/// Writes `n` executions straight into a SQLite checkpoint database (one transaction), with
/// statuses and machine names in a pattern.
fn bulk_sqlite(path: &std::path::Path, n: usize) {
    drop(CheckpointStore::sqlite(path).unwrap());
    let mut conn = rusqlite::Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO flatmachine_checkpoints (execution_id, key, step, event_rank, data)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .unwrap();
        for i in 0..n {
            let id = format!("run-{i:06}");
            let (event, rank) = if i % 10 == 0 {
                ("machine_end", 5)
            } else {
                ("state_exit", 4)
            };
            let key = format!("{id}/step_000003_{event}.json");
            let machine = if i % 1000 == 999 { "needle" } else { "bulk" };
            let snapshot = json!({
                "execution_id": id, "machine_name": machine, "spec_version": "1.0.0",
                "current_state": "work", "context": {"i": i}, "step": 3,
                "created_at": "2026-01-01T00:00:00.000000+00:00", "event": event,
                "output": null, "total_api_calls": 2, "total_cost": 0.01,
                "parent_execution_id": null, "pending_launches": null
            })
            .to_string();
            insert
                .execute(rusqlite::params![id, key, 3, rank, snapshot.as_bytes()])
                .unwrap();
            insert
                .execute(rusqlite::params![
                    id,
                    format!("{id}/latest"),
                    None::<i64>,
                    None::<i64>,
                    key.as_bytes()
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_runs_are_listed_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulk.sqlite");
    bulk_sqlite(&path, 100_000);
    let store = CheckpointStore::sqlite_read_only(&path).unwrap();
    let console = start_console(&store, None).await;

    let started = Instant::now();
    let first = http(console.addr, "GET", "/api/runs?limit=50", &[], None).await;
    let first_ms = started.elapsed().as_millis();
    assert_eq!(first.status, 200);
    let first = first.json();
    println!("first page of 100,000 runs: {first_ms} ms");
    assert!(first_ms < 3000, "the first page took {first_ms} ms");
    let runs = first["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 50);
    assert_eq!(runs[0]["id"], "run-000000");
    assert_eq!(runs[0]["status"], "finished");
    assert_eq!(runs[1]["status"], "running");
    assert_eq!(first["scanned"], 50);
    // The cursor continues where the page ended, without overlap.
    let mut cursor = first["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(cursor, "run-000049");
    for page in 1..4 {
        let next = http(
            console.addr,
            "GET",
            &format!("/api/runs?limit=50&cursor={cursor}"),
            &[],
            None,
        )
        .await
        .json();
        assert_eq!(next["runs"][0]["id"], format!("run-{:06}", page * 50));
        cursor = next["next_cursor"].as_str().unwrap().to_owned();
    }
    // The last page, far into the store, is as quick to reach.
    let started = Instant::now();
    let last = http(
        console.addr,
        "GET",
        "/api/runs?limit=50&cursor=run-099979",
        &[],
        None,
    )
    .await
    .json();
    println!("a page at run 99,980: {} ms", started.elapsed().as_millis());
    assert_eq!(last["runs"].as_array().unwrap().len(), 20);
    assert!(last["next_cursor"].is_null());
    // Filters read at most a bounded number of runs per request and say where to go on.
    let found = http(console.addr, "GET", "/api/runs?q=needle&limit=5", &[], None)
        .await
        .json();
    let ids: Vec<&str> = found["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["run-000999", "run-001999"]);
    assert_eq!(found["scanned"], 2000);
    assert_eq!(found["next_cursor"], "run-001999");
    let finished = http(
        console.addr,
        "GET",
        "/api/runs?status=finished&limit=3&cursor=run-050000",
        &[],
        None,
    )
    .await
    .json();
    let ids: Vec<&str> = finished["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["run-050010", "run-050020", "run-050030"]);
}

/// A run's timeline shows its launch outbox where it changed: the launch intent on the
/// checkpoint that recorded it, not again on the checkpoints after that carry it unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_shows_launches_where_the_outbox_changed() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::sqlite(dir.path().join("cp.sqlite")).unwrap();
    // The child waits until the parent is done, so the parent's checkpoints see the launch
    // pending (a launch that finished first leaves the outbox before the next checkpoint).
    let gate = Arc::new(tokio::sync::Notify::new());
    let child_gate = gate.clone();
    let machine = flatmachine_runtime::Machine::of::<parent_launch::Machine>()
        .persistence(store.clone())
        .action_mut("double", move |ctx, _call| {
            let gate = child_gate.clone();
            Box::pin(async move {
                gate.notified().await;
                let x = ctx
                    .get("x")
                    .and_then(flatmachine_runtime::Value::as_i64)
                    .unwrap_or(0);
                ctx.insert("y".into(), json!(x * 2));
                Ok(())
            })
        })
        .build()
        .unwrap();
    machine
        .run_with_id("launcher-1", json!({"x": 4}))
        .await
        .unwrap();
    let console = start_console(&store, None).await;
    let d = http(console.addr, "GET", "/api/runs/launcher-1", &[], None)
        .await
        .json();
    let entries = d["timeline"]["entries"].as_array().unwrap();
    let with_launches: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| !e["pending_launches"].as_array().unwrap().is_empty())
        .collect();
    assert!(!with_launches.is_empty(), "{entries:#?}");
    assert_eq!(with_launches[0]["pending_launches"][0]["machine"], "child");
    for pair in entries.windows(2) {
        let (a, b) = (&pair[0]["pending_launches"], &pair[1]["pending_launches"]);
        assert!(
            a.as_array().unwrap().is_empty() || a != b,
            "an unchanged outbox shown twice: {entries:#?}"
        );
    }
    gate.notify_one();
    // `inspect`'s fields, beside the timeline's index.
    assert!(entries[0]["index"].is_u64());
    assert!(
        entries.iter().any(|e| e["total_api_calls"].is_u64()),
        "{entries:#?}"
    );
}
