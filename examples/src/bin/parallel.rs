//! Composition, offline: two reviews of the same draft in parallel (each child with its own
//! input), a `foreach` over documents capped at 4 children at a time (`settings.max_concurrency`),
//! and a background `launch:` whose result is read back through the result backend.
//!
//! `cargo run -p flatmachine-examples --bin parallel`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flatmachine_examples::review_pipeline;
use flatmachine_runtime::results::make_uri;
use flatmachine_runtime::{Machine, Value};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let machine = Machine::of::<review_pipeline::Machine>()
        .no_persistence()
        // One handler per action; `call.machine` says which child runs it.
        .action_mut("review", |ctx, call| {
            Box::pin(async move {
                let aspect = ctx.get("aspect").and_then(Value::as_str).unwrap_or("?");
                let verdict = format!("{aspect}: fine (by {})", call.machine);
                ctx.insert("verdict".into(), verdict.into());
                Ok(())
            })
        })
        .action_mut("summarize", move |ctx, _call| {
            let (running, peak) = (r.clone(), p.clone());
            Box::pin(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                let text = ctx.get("text").and_then(Value::as_str).unwrap_or("");
                let summary: String = text
                    .split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ");
                ctx.insert("summary".into(), format!("{summary}...").into());
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        })
        .action_mut("archive", |_ctx, _call| Box::pin(async { Ok(()) }))
        .build()?;

    let documents: Vec<Value> = (1..=12)
        .map(|i| json!({"id": format!("doc-{i}"), "text": format!("document number {i} says hello")}))
        .collect();
    let result = machine
        .run(json!({"title": "Quarterly report", "documents": documents}))
        .await?;
    println!("reviews:   {}", result.output["reviews"]);
    println!("summaries: {}", result.output["summaries"]);
    println!(
        "at most {} summaries ran at once (cap 4)",
        peak.load(Ordering::SeqCst)
    );

    // The launched `archive` child runs in the background; wait for it, then read its result
    // where every launched child writes it.
    for launched in machine.join_launched().await {
        let uri = make_uri(&launched.execution_id, "result");
        let stored = machine.result_backend().read(&uri, false, None).await?;
        println!(
            "launched `{}` -> {uri}: {}",
            launched.machine,
            stored.unwrap_or(Value::Null)
        );
    }
    Ok(())
}
