//! The loopback model server both sides of the agent scenarios call: OpenAI-compatible chat
//! completions over HTTP/1.1 with keep-alive, each reply after a fixed 20 ms, always the same
//! structured output. It counts requests, the most in flight at once and when the first one
//! arrived (`GET /stats`, `POST /reset`), so `bench/run` can measure the clients.
//!
//! ```text
//! flatmachine-bench serve <port-file>
//! ```

use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The fixed latency of every completion.
pub const LATENCY: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Unix time of the first completion request since the last reset, in ns (0 = none yet).
    first_ns: AtomicU64,
}

/// Serves until the process is killed; writes the port to `port_file` once listening.
pub async fn serve(port_file: &str) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let tmp = format!("{port_file}.tmp");
    std::fs::write(&tmp, port.to_string())?;
    std::fs::rename(&tmp, port_file)?;
    let stats = Arc::new(Stats::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let stats = stats.clone();
        tokio::spawn(async move {
            let _ = connection(stream, stats).await;
        });
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One keep-alive connection: requests one after the other.
async fn connection(mut stream: TcpStream, stats: Arc<Stats>) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let first_line = head.lines().next().unwrap_or_default().to_string();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: serde_json::Value =
            serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or_default();
        buf.drain(..head_end + length);
        let reply = if first_line.starts_with("get /stats") {
            json!({
                "requests": stats.requests.load(Ordering::SeqCst),
                "max_in_flight": stats.max_in_flight.load(Ordering::SeqCst),
                "first_request_ns": stats.first_ns.load(Ordering::SeqCst),
            })
        } else if first_line.starts_with("post /reset") {
            stats.requests.store(0, Ordering::SeqCst);
            stats.max_in_flight.store(0, Ordering::SeqCst);
            stats.first_ns.store(0, Ordering::SeqCst);
            json!({"reset": true})
        } else {
            let _ =
                stats
                    .first_ns
                    .compare_exchange(0, now_ns(), Ordering::SeqCst, Ordering::SeqCst);
            stats.requests.fetch_add(1, Ordering::SeqCst);
            let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(LATENCY).await;
            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
            json!({
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model").cloned().unwrap_or(json!("bench-model")),
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "{\"score\": 7, \"feedback\": \"clear and short\"}"
                    },
                    "finish_reason": "stop"
                }],
                "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62}
            })
        };
        let text = reply.to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: keep-alive\r\n\r\n{text}",
            text.len()
        );
        stream.write_all(response.as_bytes()).await?;
    }
}
