//! What the console tests share: the machines they run, a console on a free port, and a
//! small HTTP/1.1 client that can send any header (Host, Origin) a browser or an attacker
//! would.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flatmachine_runtime::agents::{LlmResponse, ScriptedBackend};
use flatmachine_runtime::console::{Console, ConsoleOptions};
use flatmachine_runtime::persistence::CheckpointStore;
use flatmachine_runtime::signals::SignalBackend;
use flatmachine_runtime::{Machine, StateError, Value};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

flatmachine_runtime::flatmachine!("tests/machines/console/review.yml");
flatmachine_runtime::flatmachine!("tests/machines/console/long_loop.yml");
flatmachine_runtime::flatmachine!("tests/machines/events/librarian.yml");

/// The review machine: the writer answers `reply`; `check` fails (routed to `fix`).
pub fn review_machine(
    store: &CheckpointStore,
    signals: &Arc<dyn SignalBackend>,
    reply: &'static str,
) -> Machine {
    Machine::of::<review::Machine>()
        .persistence(store.clone())
        .signal_backend(signals.clone())
        .llm_backend(Arc::new(ScriptedBackend::new(move |_req| {
            let mut r = LlmResponse::text(reply).with_usage(12, 7);
            r.model = Some("scripted-writer-1".into());
            Ok(r)
        })))
        .action_mut("check", |_ctx, _call| {
            Box::pin(async move { Err(StateError::new("ValueError", "the draft is too short")) })
        })
        .action_mut("fix", |ctx, _call| {
            Box::pin(async move {
                ctx.insert("fixed".into(), json!(true));
                Ok(())
            })
        })
        .action_mut("double", |ctx, _call| {
            Box::pin(async move {
                let x = ctx.get("x").and_then(Value::as_i64).unwrap_or(0);
                ctx.insert("y".into(), json!(x * 2));
                Ok(())
            })
        })
        .build()
        .unwrap()
}

/// The loop machine; with `gate`, each `tick` first takes a permit from it.
pub fn loop_machine(store: &CheckpointStore, gate: Option<Arc<tokio::sync::Semaphore>>) -> Machine {
    Machine::of::<long_loop::Machine>()
        .persistence(store.clone())
        .action_mut("tick", move |ctx, _call| {
            let gate = gate.clone();
            Box::pin(async move {
                if let Some(gate) = gate {
                    gate.acquire().await.unwrap().forget();
                }
                let n = ctx.get("n").and_then(Value::as_i64).unwrap_or(0);
                ctx.insert("n".into(), json!(n + 1));
                Ok(())
            })
        })
        .build()
        .unwrap()
}

/// The librarian (a tool loop): one reply asking for `lookup` twice, then the answer.
pub fn librarian_machine(store: &CheckpointStore) -> Machine {
    Machine::of::<librarian::Machine>()
        .persistence(store.clone())
        .llm_backend(Arc::new(ScriptedBackend::new(|req| {
            let asked = req
                .messages
                .iter()
                .any(|m| m.role == flatmachine_runtime::agents::Role::Tool);
            Ok(if asked {
                LlmResponse::text("A kettle boils water.")
            } else {
                LlmResponse::text("")
                    .with_tool_call("call-1", "lookup", json!({"word": "kettle"}))
                    .with_tool_call("call-2", "lookup", json!({"word": "pot"}))
            })
        })))
        .tool_handler("lookup", |args: Value, _call| async move {
            Ok::<_, flatmachine_runtime::tools::ToolError>(format!("{}: a word", args["word"]))
        })
        .build()
        .unwrap()
}

/// A console serving on a free loopback port until dropped.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

pub async fn start_console(
    store: &CheckpointStore,
    signals: Option<Arc<dyn SignalBackend>>,
) -> Running {
    let mut options = ConsoleOptions::new(store.clone());
    options.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    options.signals = signals;
    options.store_name = "test store".into();
    let console = Console::bind(options).await.unwrap();
    let addr = console.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(console.serve(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop: Some(stop),
    }
}

/// A response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request (`Host` is the console's unless `headers` name one).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    if let Some(body) = body {
        // A refused body may close the connection before it is all written.
        let _ = stream.write_all(body).await;
    }
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await;
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// Waits until `check` holds (polling), for at most `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within {secs}s");
}
