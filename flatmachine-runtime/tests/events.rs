//! The run event stream (`Machine::stream`): typed events in order, children's events tagged
//! with their execution ids, token deltas, errors and their routes, and the buffering policy
//! for a slow consumer.

use flatmachine_runtime::events::{self, ErrorRoute, EventKind, RunEvent};
use flatmachine_runtime::{
    ActionCall, AgentOutput, Context, Machine, RunOptions, StateError, Value,
};
use futures::StreamExt;
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/events/watched.yml");
flatmachine_runtime::flatmachine!("tests/machines/error_unrouted.yml");

fn double<'a>(
    ctx: &'a mut Context,
    _call: &'a ActionCall,
) -> futures::future::BoxFuture<'a, Result<(), StateError>> {
    Box::pin(async move {
        let x = ctx.get("x").and_then(Value::as_i64).unwrap_or(0);
        ctx.insert("y".into(), json!(2 * x));
        Ok(())
    })
}

/// The watched machine: its agent streams `deltas` (one token delta each).
fn watched(deltas: Vec<String>) -> Machine {
    Machine::of::<watched::Machine>()
        .agent("writer", move |_input: Value, _ctx: Context| {
            let deltas = deltas.clone();
            async move {
                for d in &deltas {
                    events::emit_token_delta(d);
                }
                Ok(AgentOutput::new(json!({"text": deltas.concat()})))
            }
        })
        .action_mut("double", double)
        .action_mut("explode", |_ctx, _call| {
            Box::pin(async { Err(StateError::new("Boom", "the risky state failed")) })
        })
        .build()
        .unwrap()
}

fn root_kinds(events: &[RunEvent], root: &str) -> Vec<EventKind> {
    events
        .iter()
        .filter(|e| &*e.execution_id == root)
        .map(|e| e.kind.clone())
        .collect()
}

#[tokio::test]
async fn a_run_with_children_streams_its_events_and_theirs_tagged_by_execution() {
    let machine = watched(vec!["Hel".into(), "lo".into()]);
    let options = RunOptions::new().execution_id("root-1");
    let mut stream = machine.stream(json!({"topic": "t", "items": [1, 2, 3]}), options);
    let mut seen = Vec::new();
    while let Some(event) = stream.next().await {
        seen.push(event);
    }
    let result = stream.result().await.unwrap();
    assert_eq!(result.output["text"], json!("Hello"));

    // The root's own events, in order.
    let root = root_kinds(&seen, "root-1");
    assert_eq!(root[0], EventKind::MachineStart { resumed: false });
    let entered: Vec<(&str, u64)> = root
        .iter()
        .filter_map(|k| match k {
            EventKind::StateEnter { state, step } => Some((*state, *step)),
            _ => None,
        })
        .collect();
    assert_eq!(
        entered,
        [
            ("start", 1),
            ("fan_out", 2),
            ("risky", 3),
            ("recovered", 4),
            ("done", 5)
        ]
    );
    let transitions: Vec<(&str, &str)> = root
        .iter()
        .filter_map(|k| match k {
            EventKind::Transition { from, to } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(
        transitions,
        [
            ("start", "fan_out"),
            ("fan_out", "risky"),
            ("recovered", "done")
        ]
    );
    // The agent call: start, the deltas in order, end with its count and latency.
    let call: Vec<&EventKind> = root
        .iter()
        .skip_while(|k| !matches!(k, EventKind::AgentCallStart { .. }))
        .take(4)
        .collect();
    assert_eq!(
        call[0],
        &EventKind::AgentCallStart {
            state: "start",
            agent: "writer"
        }
    );
    assert_eq!(call[1], &EventKind::TokenDelta { text: "Hel".into() });
    assert_eq!(call[2], &EventKind::TokenDelta { text: "lo".into() });
    match call[3] {
        EventKind::AgentCallEnd {
            state,
            agent,
            api_calls,
            error,
            ..
        } => {
            assert_eq!((*state, *agent, *api_calls), ("start", "writer", 1));
            assert!(error.is_none());
        }
        other => panic!("expected the call's end, got {other:?}"),
    }
    // The routed error names its route.
    let error = root
        .iter()
        .find_map(|k| match k {
            EventKind::Error {
                state,
                error,
                route,
            } => Some((*state, error.clone(), route.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(error.0, "risky");
    assert_eq!(error.1.error_type, "Boom");
    assert_eq!(error.2, ErrorRoute::Recover("recovered"));
    // Checkpoints, with their step.
    let checkpoints: Vec<(&str, &str, u64)> = root
        .iter()
        .filter_map(|k| match k {
            EventKind::CheckpointSaved {
                event, state, step, ..
            } => Some((*event, *state, *step)),
            _ => None,
        })
        .collect();
    assert!(checkpoints.contains(&("state_enter", "fan_out", 2)));
    assert_eq!(checkpoints.first(), Some(&("machine_start", "start", 0)));
    assert_eq!(checkpoints.last(), Some(&("machine_end", "end", 5)));
    // The last root event is its end, with its totals.
    match root.last().unwrap() {
        EventKind::MachineEnd {
            final_state,
            steps,
            totals,
        } => {
            assert_eq!((final_state.as_str(), *steps), ("done", 5));
            assert_eq!(totals.api_calls, 1);
        }
        other => panic!("expected the end, got {other:?}"),
    }

    // The three foreach children and the launched one: their own events, tagged with their
    // ids and the parent's, each from start to end.
    let launched = root
        .iter()
        .find_map(|k| match k {
            EventKind::Launched {
                state,
                machine,
                child_execution_id,
            } => {
                assert_eq!((*state, *machine), ("recovered", "child"));
                Some(child_execution_id.clone())
            }
            _ => None,
        })
        .unwrap();
    let mut children: Vec<&str> = seen
        .iter()
        .filter(|e| matches!(e.kind, EventKind::MachineStart { .. }))
        .filter(|e| e.parent_execution_id.as_deref() == Some("root-1"))
        .map(|e| &*e.execution_id)
        .collect();
    assert_eq!(children.len(), 4, "{children:?}");
    assert!(children.contains(&launched.as_str()));
    children.sort_unstable();
    children.dedup();
    assert_eq!(children.len(), 4);
    for child in &children {
        let own = root_kinds(&seen, child);
        assert!(
            seen.iter()
                .filter(|e| &*e.execution_id == *child)
                .all(|e| e.machine == "child_double"
                    && e.parent_execution_id.as_deref() == Some("root-1"))
        );
        assert!(matches!(own[0], EventKind::MachineStart { .. }));
        assert!(own.contains(&EventKind::StateEnter {
            state: "start",
            step: 1
        }));
        assert!(
            matches!(own.last(), Some(EventKind::MachineEnd { final_state, .. }) if final_state == "done")
        );
    }
    // A foreach child ends before its parent leaves the foreach state.
    let position = |pred: &dyn Fn(&RunEvent) -> bool| seen.iter().position(pred).unwrap();
    let first_child_end = position(&|e| {
        &*e.execution_id == children[0] && matches!(e.kind, EventKind::MachineEnd { .. })
    });
    let parent_exit = position(&|e| {
        &*e.execution_id == "root-1"
            && e.kind
                == EventKind::StateExit {
                    state: "fan_out",
                    step: 2,
                }
    });
    assert!(first_child_end < parent_exit);
}

#[tokio::test]
async fn a_failing_run_reports_the_error_its_route_and_the_failure() {
    let machine = Machine::of::<error_unrouted::Machine>()
        .action_mut("risky", |_ctx, _call| {
            Box::pin(async { Err(StateError::new("Boom", "no route")) })
        })
        .build()
        .unwrap();
    let mut stream = machine.stream(json!({}), RunOptions::new().execution_id("failing"));
    let mut kinds = Vec::new();
    while let Some(event) = stream.next().await {
        kinds.push(event.kind);
    }
    assert!(stream.result().await.is_err());
    assert!(kinds.iter().any(|k| matches!(
        k,
        EventKind::Error { state: "start", route: ErrorRoute::Fails, error } if error.error_type == "Boom"
    )));
    match kinds.last().unwrap() {
        EventKind::MachineFailed { error, steps } => {
            assert_eq!(*steps, 1);
            assert!(error.message.contains("no route"), "{error:?}");
        }
        other => panic!("expected the failure, got {other:?}"),
    }
}

/// Events are handed over in batches, but never held back while the run waits: here the
/// state's action waits until the consumer has seen the state's `StateEnter` (a run that kept
/// it in its batch would never finish).
async fn events_reach_the_consumer_while_the_run_waits() {
    let seen = std::sync::Arc::new(tokio::sync::Notify::new());
    let waiting = seen.clone();
    let machine = Machine::of::<error_unrouted::Machine>()
        .action_mut("risky", move |_ctx, _call| {
            let waiting = waiting.clone();
            Box::pin(async move {
                waiting.notified().await;
                Ok(())
            })
        })
        .build()
        .unwrap();
    let mut stream = machine.stream(json!({}), RunOptions::new());
    let watched = async {
        while let Some(event) = stream.next().await {
            if matches!(event.kind, EventKind::StateEnter { state: "start", .. }) {
                seen.notify_one();
            }
        }
        stream.result().await
    };
    let result = tokio::time::timeout(std::time::Duration::from_secs(20), watched)
        .await
        .expect("the consumer never saw the state the run waits in")
        .unwrap();
    assert_eq!(result.output["route"], "ok");
}

#[tokio::test]
async fn events_reach_a_consumer_on_the_same_thread_while_the_run_waits() {
    events_reach_the_consumer_while_the_run_waits().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_a_consumer_on_another_thread_while_the_run_waits() {
    events_reach_the_consumer_while_the_run_waits().await;
}

/// A buffer of one event and a consumer that is not reading: token deltas are joined (none
/// lost, order kept), and no other event is dropped (the run waits for the consumer).
#[tokio::test]
async fn a_slow_consumer_loses_no_state_event_and_no_token_text() {
    let deltas: Vec<String> = (0..1000).map(|i| format!("{i} ")).collect();
    let expected = deltas.concat();
    let machine = watched(deltas);
    let mut stream = machine.stream_with_capacity(
        json!({"topic": "t", "items": [1, 2]}),
        RunOptions::new().execution_id("slow"),
        1,
    );
    let mut seen = Vec::new();
    while let Some(event) = stream.next().await {
        seen.push(event);
        // A slow consumer: the run gets ahead between reads.
        tokio::task::yield_now().await;
    }
    stream.result().await.unwrap();
    let root = root_kinds(&seen, "slow");
    let text: String = root
        .iter()
        .filter_map(|k| match k {
            EventKind::TokenDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, expected);
    let delta_count = root
        .iter()
        .filter(|k| matches!(k, EventKind::TokenDelta { .. }))
        .count();
    assert!(
        delta_count < 1000,
        "deltas were not coalesced: {delta_count}"
    );
    let entered = root
        .iter()
        .filter(|k| matches!(k, EventKind::StateEnter { .. }))
        .count();
    assert_eq!(entered, 5);
    assert!(matches!(root.last(), Some(EventKind::MachineEnd { .. })));
}

#[tokio::test]
async fn a_consumer_that_leaves_does_not_stop_the_run() {
    let machine = watched(vec!["x".into()]);
    let mut stream = machine.stream_with_capacity(
        json!({"topic": "t", "items": [1, 2, 3]}),
        RunOptions::new(),
        1,
    );
    // One event read, then the rest abandoned.
    assert!(stream.next().await.is_some());
    let result = stream.result().await.unwrap();
    assert_eq!(
        result.output["results"],
        json!([{"y": 2}, {"y": 4}, {"y": 6}])
    );
}

#[tokio::test]
async fn without_a_stream_nothing_is_emitted() {
    let machine = Machine::of::<watched::Machine>()
        .agent("writer", |_input: Value, _ctx: Context| async move {
            events::emit_token_delta("ignored");
            Ok(AgentOutput::new(json!({"text": events::is_streaming()})))
        })
        .action_mut("double", double)
        .action_mut("explode", |_ctx, _call| {
            Box::pin(async { Err(StateError::new("Boom", "x")) })
        })
        .build()
        .unwrap();
    let result = machine
        .run(json!({"topic": "t", "items": []}))
        .await
        .unwrap();
    assert_eq!(result.output["text"], json!(false));
}

flatmachine_runtime::flatmachine!("tests/machines/events/storyteller.yml");

/// `stream: true` in a model profile reaches the backend; the scripted backend then streams
/// its reply word by word, and the agent's result is the whole reply.
#[tokio::test]
async fn a_profile_with_stream_true_streams_a_flatagent_reply() {
    use flatmachine_runtime::agents::{LlmResponse, ScriptedBackend};
    let backend = std::sync::Arc::new(ScriptedBackend::new(|req| {
        assert!(
            req.stream,
            "the profile's `stream: true` reaches the request"
        );
        Ok(LlmResponse::text("Once upon a time."))
    }));
    let machine = Machine::of::<storyteller::Machine>()
        .llm_backend(backend.clone())
        .build()
        .unwrap();
    let mut stream = machine.stream(json!({"topic": "a cat"}), RunOptions::new());
    let mut deltas = Vec::new();
    while let Some(event) = stream.next().await {
        if let EventKind::TokenDelta { text } = event.kind {
            deltas.push(text);
        }
    }
    let result = stream.result().await.unwrap();
    assert_eq!(deltas, ["Once ", "upon ", "a ", "time."]);
    assert_eq!(result.output["story"], json!("Once upon a time."));
    assert_eq!(backend.requests().len(), 1);
}
