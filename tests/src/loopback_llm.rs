//! A loopback HTTP server that speaks the OpenAI chat completions and Anthropic Messages JSON,
//! answering each request with a test-supplied function: the real providers' wire formats over
//! a real socket, with no network and no key.

use async_trait::async_trait;
use flatmachine_runtime::agents::{LlmBackend, LlmError, LlmRequest, LlmResponse, ProviderRouter};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path (`/v1/chat/completions`, `/v1/messages`).
    pub path: String,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Value,
}

impl Received {
    /// The system prompt (OpenAI: the `system` message; Anthropic: the `system` field, a list
    /// of text blocks).
    pub fn system(&self) -> String {
        match self.body.get("system") {
            Some(system) if !system.is_null() => text_of(system),
            _ => self.message("system"),
        }
    }

    /// The text of the first message with this role (a string content, or its text blocks).
    pub fn message(&self, role: &str) -> String {
        self.messages()
            .into_iter()
            .find(|(r, _)| r == role)
            .map(|(_, text)| text)
            .unwrap_or_default()
    }

    /// Every message as (role, text), in order.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.body["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["role"].as_str().unwrap_or_default().to_string(),
                    text_of(&m["content"]),
                )
            })
            .collect()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A content as text: a string, or the `text` of a list of text blocks.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// What the answering function returns: a status and a JSON body.
pub type Answer = (u16, Value);

type Responder = Arc<dyn Fn(&Received) -> Answer + Send + Sync>;

/// A running server (stops when dropped with its runtime).
pub struct LoopbackLlm {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl LoopbackLlm {
    /// Starts a server on 127.0.0.1 answering every request with `respond`.
    pub async fn start(respond: impl Fn(&Received) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let responder: Responder = Arc::new(respond);
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let responder = responder.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, responder, log).await;
                });
            }
        });
        Self { addr, received }
    }

    /// The OpenAI-style base URL (`http://127.0.0.1:PORT/v1`).
    pub fn openai_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The Anthropic-style base URL (`http://127.0.0.1:PORT`).
    pub fn anthropic_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// An OpenAI chat completion reply with this text and token counts.
pub fn openai_reply(text: &str, prompt_tokens: u64, completion_tokens: u64) -> Answer {
    (
        200,
        json!({
            "id": "chatcmpl-loopback",
            "object": "chat.completion",
            "model": "loopback-model",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens
            }
        }),
    )
}

/// An Anthropic Messages reply with this text and token counts.
pub fn anthropic_reply(text: &str, input_tokens: u64, output_tokens: u64) -> Answer {
    (
        200,
        json!({
            "id": "msg_loopback",
            "type": "message",
            "role": "assistant",
            "model": "loopback-model",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}
        }),
    )
}

/// An error reply in the OpenAI shape.
pub fn error_reply(status: u16, message: &str) -> Answer {
    (
        status,
        json!({"error": {"message": message, "type": "invalid_request_error"}}),
    )
}

async fn serve(
    mut stream: TcpStream,
    respond: Responder,
    log: Arc<Mutex<Vec<Received>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Value = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
    let req = Received {
        path,
        headers,
        body,
    };
    let (status, reply) = respond(&req);
    log.lock().unwrap().push(req);
    let text = reply.to_string();
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Sends every request to `base`, as a profile's `base_url` would, through `inner`.
pub struct AtBase {
    inner: Arc<dyn LlmBackend>,
    base: String,
}

impl AtBase {
    /// Wraps `inner` so every request goes to `base`.
    pub fn new(inner: Arc<dyn LlmBackend>, base: impl Into<String>) -> Self {
        Self {
            inner,
            base: base.into(),
        }
    }
}

#[async_trait]
impl LlmBackend for AtBase {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let mut r = request.clone();
        r.base_url = Some(self.base.clone());
        self.inner.complete(&r).await
    }
}

/// The built-in providers (`ProviderRouter`) with every request sent to this server's
/// OpenAI-style base.
pub fn providers_at(server: &LoopbackLlm) -> Arc<dyn LlmBackend> {
    Arc::new(AtBase::new(
        Arc::new(ProviderRouter::new()),
        server.openai_base(),
    ))
}
