//! Machines of this repository through the agent features the corpus tests also exercise
//! (`agents_corpus.rs`, which needs the conformance corpus): `mdap_voting` over noisy free-text
//! replies (regex parsing, schema validation, voting), and a chat loop of actions around a
//! free-text agent. Against the loopback server speaking the OpenAI wire format.

use flatmachine_runtime::{Context, Machine, Value, flatmachine};
use flatmachine_tests::loopback_llm::{LoopbackLlm, Received, openai_reply, providers_at};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

flatmachine!("machines/agents/countdown.yml");
flatmachine!("machines/agents/chat.yml");

/// The number the stepper is asked about.
fn asked(req: &Received) -> i64 {
    let user = req.message("user");
    let rest = &user[user.find("The number is ").unwrap() + "The number is ".len()..];
    rest.trim_end().trim_end_matches('.').parse().unwrap()
}

#[tokio::test]
async fn voting_steps_through_noisy_replies() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let server = LoopbackLlm::start(move |req: &Received| {
        let n = asked(req);
        let text = match c.fetch_add(1, Ordering::SeqCst) % 4 {
            // No parsable `next`: red-flagged, not a vote.
            1 => "Hmm, counting is hard today.".to_string(),
            // Parsed, but fails validation (`minimum: 0` on the last step, wrong otherwise):
            // a wrong answer that must lose on margin.
            3 => format!("next = {}\ncheck = true", n + 5),
            _ => format!("Sure.\nnext = {}\ncheck = {}", n - 1, n > 0),
        };
        openai_reply(&text, 40, 6)
    })
    .await;
    let machine = Machine::of::<countdown::Machine>()
        .llm_backend(providers_at(&server))
        .no_persistence()
        .build()
        .unwrap();
    let result = machine.run(json!({"start": 3})).await.unwrap();
    assert_eq!(result.final_state, "done", "{:?}", result.context);
    assert_eq!(result.output, json!({"trail": [2, 1, 0], "steps": 3}));
    // Every sample is one call, the rambling and the losing ones included.
    assert_eq!(
        result.total_api_calls,
        u64::from(calls.load(Ordering::SeqCst))
    );
    assert!(result.total_api_calls > 2 * 3, "{}", result.total_api_calls);
    assert_eq!(result.usage.input_tokens, 40 * result.total_api_calls);
}

#[tokio::test]
async fn chat_actions_around_a_free_text_agent() {
    let server = LoopbackLlm::start(|req: &Received| {
        assert!(
            req.system().contains("You speak as Ada"),
            "{}",
            req.system()
        );
        let user = req.message("user");
        let line = user.lines().last().unwrap_or("").to_string();
        openai_reply(&format!("Ada smiles. ({line})"), 30, 5)
    })
    .await;
    let lines = Arc::new(Mutex::new(vec!["/bye", "And you?", "Hello"]));
    let machine = Machine::of::<chat::Machine>()
        .llm_backend(providers_at(&server))
        .action_mut("load_persona", |ctx: &mut Context, _call| {
            ctx.insert("persona".into(), json!("Ada"));
            Box::pin(async { Ok(()) })
        })
        .action_mut("read_line", move |ctx: &mut Context, _call| {
            let next = lines.lock().unwrap().pop().unwrap_or("/bye");
            ctx.insert("line".into(), json!(next));
            Box::pin(async { Ok(()) })
        })
        .action_mut("remember_turn", |ctx: &mut Context, _call| {
            let turn = json!({"user": ctx["line"].clone(), "ada": ctx["answer"].clone()});
            if let Some(Value::Array(history)) = ctx.get_mut("history") {
                history.push(turn);
            }
            Box::pin(async { Ok(()) })
        })
        .no_persistence()
        .build()
        .unwrap();
    let result = machine.run(json!({})).await.unwrap();
    assert_eq!(result.output, json!({"persona": "Ada", "turns": 2}));
    assert_eq!(
        result.context["history"],
        json!([
            {"user": "Hello", "ada": "Ada smiles. (The user says: Hello)"},
            {"user": "And you?", "ada": "Ada smiles. (The user says: And you?)"},
        ])
    );
    let received = server.received();
    assert_eq!(received.len(), 2);
    // The second prompt carries the first turn, rendered as JSON by `tojson`.
    assert!(
        received[1].message("user").contains(r#""user": "Hello""#),
        "{}",
        received[1].message("user")
    );
    assert_eq!(result.total_api_calls, 2);
}
