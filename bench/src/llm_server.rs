//! `flatmachine-bench serve-llm <rounds>`: a loopback OpenAI-compatible chat completions server
//! for the tool-round benchmark. Each request whose conversation holds fewer than `<rounds>`
//! tool results is answered with one call of the `step` tool (`{"n": <results so far>}`); then
//! with a final answer. Keep-alive HTTP/1.1 (axum), so both clients reuse their connection.

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

async fn complete(State(rounds): State<u64>, Json(body): Json<Value>) -> Json<Value> {
    let results = body["messages"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["role"] == "tool").count() as u64)
        .unwrap_or(0);
    let message = if results < rounds {
        json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": format!("call_{results}"),
                "type": "function",
                "function": {"name": "step", "arguments": json!({"n": results}).to_string()},
            }],
        })
    } else {
        json!({"role": "assistant", "content": format!("done after {results} rounds")})
    };
    let finish = if results < rounds {
        "tool_calls"
    } else {
        "stop"
    };
    Json(json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }))
}

/// Serves until killed; prints `http://127.0.0.1:<port>/v1` first.
pub async fn serve(rounds: u64) -> Result<(), Box<dyn std::error::Error>> {
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(complete))
        .route("/chat/completions", post(complete))
        .with_state(rounds);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("http://{}/v1", listener.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;
    axum::serve(listener, app).await?;
    Ok(())
}
