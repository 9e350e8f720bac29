//! More corpus machines with agents, unchanged, against the loopback server: Tower of Hanoi
//! with `mdap_voting` (regex parsing, schema validation, voting on noisy replies) and the
//! character-card chat (actions around an agent, free-text output).
//!
//! Only with the conformance corpus (`FLATMACHINE_CONFORMANCE_DIR`; `build.rs` compiles the
//! machines and sets `cfg(flatmachine_corpus)`). `tests/agents_fixtures.rs` runs machines of
//! this repository through the same features.

#[cfg(not(flatmachine_corpus))]
#[path = "../../flatmachine-build/tests/support/conformance.rs"]
mod conformance;

#[cfg(not(flatmachine_corpus))]
#[test]
fn corpus_agent_machines_need_the_conformance_corpus() {
    assert!(conformance::corpus_dir("agents_corpus").is_none());
}

#[cfg(flatmachine_corpus)]
mod corpus {
    use flatmachine_runtime::{Context, Machine, Value};
    use flatmachine_tests::loopback_llm::{LoopbackLlm, Received, openai_reply, providers_at};
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    include!(concat!(env!("OUT_DIR"), "/corpus/mdap_hanoi.rs"));
    include!(concat!(env!("OUT_DIR"), "/corpus/character_card_chat.rs"));

    type Pegs = Vec<Vec<u64>>;

    /// The procedure the hanoi prompt describes: move disk 1 clockwise unless the previous move
    /// moved it; then make the only legal move not involving disk 1.
    fn next_move(pegs: &Pegs, previous: Option<&[u64]>) -> (Vec<u64>, Pegs) {
        let top = |p: &Vec<u64>| p.last().copied();
        let (disk, from, to) = if previous.is_none_or(|m| m[0] != 1) {
            let from = pegs.iter().position(|p| top(p) == Some(1)).unwrap();
            (1, from, (from + 1) % 3)
        } else {
            let others: Vec<usize> = (0..3).filter(|&i| top(&pegs[i]) != Some(1)).collect();
            let (a, b) = (others[0], others[1]);
            match (top(&pegs[a]), top(&pegs[b])) {
                (Some(x), Some(y)) if x < y => (x, a, b),
                (Some(_), Some(y)) => (y, b, a),
                (Some(x), None) => (x, a, b),
                (None, Some(y)) => (y, b, a),
                (None, None) => unreachable!("disk 1 is on a third peg"),
            }
        };
        let mut next = pegs.clone();
        next[from].pop();
        next[to].push(disk);
        (vec![disk, from as u64, to as u64], next)
    }

    fn parse_after<'a>(text: &'a str, label: &str) -> &'a str {
        let rest = &text[text.find(label).unwrap() + label.len()..];
        rest.lines().next().unwrap().trim()
    }

    #[tokio::test]
    async fn corpus_mdap_hanoi_votes_its_way_to_the_goal() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let server = LoopbackLlm::start(move |req: &Received| {
            let user = req.message("user");
            let pegs: Pegs = serde_json::from_str(parse_after(&user, "Current State:")).unwrap();
            let prev = parse_after(&user, "Previous move:");
            let prev: Option<Vec<u64>> = serde_json::from_str(prev).ok();
            let (mv, next) = next_move(&pegs, prev.as_deref());
            let n = c.fetch_add(1, Ordering::SeqCst);
            let text = match n % 5 {
                // A rambling sample with no parsable move: red-flagged as a format error.
                3 => "Let me think about this carefully... the disks are stacked.".to_string(),
                // A wrong but well-formed answer: it gets a vote, and loses on margin.
                4 => format!("move = [9, 9, 9]\nnext_state = {}", json!(next)),
                _ => format!(
                    "Reasoning: follow the procedure.\n'''move = {}'''\n'''next_state = {}'''",
                    json!(mv),
                    json!(next)
                ),
            };
            openai_reply(&text, 300, 40)
        })
        .await;
        let machine = Machine::of::<mdap_hanoi::Machine>()
            .llm_backend(providers_at(&server))
            .no_persistence()
            .build()
            .unwrap();
        // Where the procedure ends for three disks.
        let mut pegs: Pegs = vec![vec![3, 2, 1], vec![], vec![]];
        let mut prev: Option<Vec<u64>> = None;
        let mut moves = 0;
        while pegs[0].len() + pegs[1].len().min(pegs[2].len()) > 0 {
            let (mv, next) = next_move(&pegs, prev.as_deref());
            pegs = next;
            prev = Some(mv);
            moves += 1;
        }
        let result = machine
            .run(json!({"initial_pegs": [[3, 2, 1], [], []], "goal_pegs": pegs}))
            .await
            .unwrap();
        assert_eq!(result.final_state, "done", "{:?}", result.context);
        assert_eq!(result.output["solved"], true);
        assert_eq!(result.output["steps"], moves);
        assert_eq!(moves, 7);
        // Every sample was one call; red-flagged and losing samples cost calls too.
        assert_eq!(
            result.total_api_calls,
            u64::from(calls.load(Ordering::SeqCst))
        );
        assert!(result.total_api_calls > 3 * 7, "{}", result.total_api_calls);
    }

    #[tokio::test]
    async fn corpus_character_card_chats_until_quit() {
        let server = LoopbackLlm::start(|req: &Received| {
            assert!(
                req.system().contains("Write Mira's next reply"),
                "{}",
                req.system()
            );
            let user = req.message("user");
            openai_reply(
                &format!(
                    "Mira nods. (you said: {})",
                    user.lines().last().unwrap_or("")
                ),
                80,
                12,
            )
        })
        .await;
        let inputs = Arc::new(std::sync::Mutex::new(vec!["/quit", "Hello there"]));
        let machine = Machine::of::<character_card_chat::Machine>()
            .llm_backend(providers_at(&server))
            .action_mut("load_card", |ctx: &mut Context, _call| {
                ctx.insert("card_name".into(), json!("Mira"));
                ctx.insert("card_description".into(), json!("A lighthouse keeper."));
                Box::pin(async { Ok(()) })
            })
            .action_mut("show_greeting", |_ctx: &mut Context, _call| {
                Box::pin(async { Ok(()) })
            })
            .action_mut("get_user_input", move |ctx: &mut Context, _call| {
                let next = inputs.lock().unwrap().pop().unwrap_or("/quit");
                ctx.insert("user_message".into(), json!(next));
                Box::pin(async { Ok(()) })
            })
            .action_mut("update_chat_history", |ctx: &mut Context, _call| {
                let user = ctx["user_message"].clone();
                let reply = ctx["assistant_message"].clone();
                let messages = ctx
                    .entry("messages")
                    .or_insert_with(|| Value::Array(vec![]));
                if let Value::Array(m) = messages {
                    m.push(json!({"role": "user", "content": user}));
                    m.push(json!({"role": "assistant", "content": reply}));
                }
                Box::pin(async { Ok(()) })
            })
            .no_persistence()
            .build()
            .unwrap();
        let result = machine.run(json!({})).await.unwrap();
        assert_eq!(result.output, json!({"character": "Mira", "turns": 2}));
        assert_eq!(
            result.context["messages"][1]["content"],
            "Mira nods. (you said: User: Hello there)"
        );
        assert_eq!(server.received().len(), 1);
    }
}
