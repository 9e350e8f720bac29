//! Typed runs (docs/typed.md): `build_typed` gives a machine whose runs take the generated
//! `Input`, return the generated `Output` and the final `State`; hooks read an agent state's
//! output as its typed struct with `agents::AnyOutput::of_state`.

use flatmachine_runtime::agents::{LlmRequest, LlmResponse, Role, ScriptedBackend};
use flatmachine_runtime::hooks::{ActionOutcome, HookError, MachineHooks};
use flatmachine_runtime::{Context, Machine, TypedRunError, Value};
use std::sync::{Arc, Mutex};

flatmachine_runtime::flatmachine!("machines/typed_io/machine.yml");
flatmachine_runtime::flatmachine!("machines/order.yml");

use typed_io::agents::{AnyOutput, ClassifierCategory, ClassifierOutput};
use typed_io::{Input, InputCustomer, InputCustomerTier, OutputCategory, State};

/// The classifier calls billing what mentions money, anything else a question; the drafter
/// answers in one line.
fn backend() -> Arc<ScriptedBackend> {
    Arc::new(ScriptedBackend::new(|req: &LlmRequest| {
        let system = req.message(Role::System).unwrap_or_default();
        let user = req.message(Role::User).unwrap_or_default();
        let reply = if system.contains("Sort") {
            let billing = user.contains("refund");
            serde_json::json!({
                "category": if billing { "billing" } else { "question" },
                "urgent": user.starts_with("pro"),
            })
            .to_string()
        } else {
            "  Yes, it works offline.  ".to_string()
        };
        Ok(LlmResponse::text(reply))
    }))
}

/// Records the classifier's typed output as hooks see it.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, ClassifierOutput)>>,
}

#[async_trait::async_trait]
impl MachineHooks for Recorder {
    async fn on_state_exit(
        &self,
        state: &str,
        _context: &mut Context,
        output: &mut Option<Value>,
    ) -> Result<(), HookError> {
        let Some(output) = output else { return Ok(()) };
        match AnyOutput::of_state(state, output) {
            Some(Ok(AnyOutput::Classifier(c))) => {
                self.seen.lock().unwrap().push((state.to_string(), c));
                Ok(())
            }
            Some(Err(e)) => Err(HookError::failed(format!("classifier output: {e}"))),
            None => Ok(()),
        }
    }
}

fn input(subject: &str, tier: InputCustomerTier, priority: Option<i64>) -> Input {
    Input {
        subject: subject.into(),
        customer: InputCustomer {
            name: "Ada".into(),
            tier,
        },
        priority,
        break_output: None,
    }
}

#[tokio::test]
async fn a_typed_run_takes_input_and_gives_output_and_final_state() {
    let recorder = Arc::new(Recorder::default());
    let machine = Machine::of::<typed_io::Machine>()
        .llm_backend(backend())
        .hooks(recorder.clone())
        .no_persistence()
        .build_typed::<typed_io::Machine>()
        .unwrap();

    let run = machine
        .run(&input(
            "does it work offline?",
            InputCustomerTier::Pro,
            Some(1),
        ))
        .await
        .unwrap();
    assert_eq!(run.final_state, State::Answered);
    assert!(run.final_state.is_final());
    assert_eq!(run.output.category, OutputCategory::Question);
    assert!(run.output.urgent);
    assert_eq!(run.output.priority, 1);
    // `ticket` is a number in the context (`{{ 1000 + ... }}`): the `str` field reads its text.
    assert_eq!(run.output.ticket, "1001");
    assert_eq!(run.output.reply.as_deref(), Some("Yes, it works offline."));
    assert_eq!(run.result.total_api_calls, 2);
    assert_eq!(run.result.final_state, "answered");
    // The typed results of the agent states (the drafter has no schema, so only the classifier).
    assert_eq!(
        run.agent_outputs,
        vec![(
            State::Classify,
            AnyOutput::Classifier(ClassifierOutput {
                category: ClassifierCategory::Question,
                urgent: true
            })
        )]
    );

    // An optional input field left out is absent (not `null`), so `default` applies.
    let run = machine
        .run(&input("refund my order", InputCustomerTier::Free, None))
        .await
        .unwrap();
    assert_eq!(run.final_state, State::Routed);
    assert_eq!(run.output.category, OutputCategory::Billing);
    assert!(!run.output.urgent);
    assert_eq!(run.output.priority, 3);
    assert_eq!(run.output.ticket, "1003");
    assert_eq!(run.output.reply, None);
    assert!(matches!(
        run.agent_outputs.as_slice(),
        [(
            State::Classify,
            AnyOutput::Classifier(ClassifierOutput {
                category: ClassifierCategory::Billing,
                urgent: false
            })
        )]
    ));

    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (
                "classify".to_string(),
                ClassifierOutput {
                    category: ClassifierCategory::Question,
                    urgent: true
                }
            ),
            (
                "classify".to_string(),
                ClassifierOutput {
                    category: ClassifierCategory::Billing,
                    urgent: false
                }
            ),
        ]
    );
    // States that call no agent with an output schema have no typed agent output.
    assert!(AnyOutput::of_state("draft", &serde_json::json!({"content": "x"})).is_none());
    assert!(AnyOutput::of_state("start", &serde_json::json!({})).is_none());
}

#[tokio::test]
async fn an_output_that_does_not_fit_is_an_error_that_keeps_the_untyped_result() {
    let machine = Machine::of::<typed_io::Machine>()
        .llm_backend(backend())
        .no_persistence()
        .build_typed::<typed_io::Machine>()
        .unwrap();
    let mut bad = input("not a number", InputCustomerTier::Free, None);
    bad.break_output = Some(true);
    let err = machine.run(&bad).await.unwrap_err();
    let message = err.to_string();
    match err {
        TypedRunError::Output { result, .. } => {
            assert_eq!(result.final_state, "broken");
            assert_eq!(result.output["priority"], "not a number");
        }
        other => panic!("expected an output error, got {other:?}"),
    }
    assert!(
        message.contains("the output of final state `broken` does not fit the declared `Output`"),
        "{message}"
    );
}

#[tokio::test]
async fn a_run_failure_is_the_untyped_error() {
    // The classifier's reply is not JSON: the state fails, there is no `on_error`.
    let machine = Machine::of::<typed_io::Machine>()
        .llm_backend(Arc::new(ScriptedBackend::always("not json")))
        .no_persistence()
        .build_typed::<typed_io::Machine>()
        .unwrap();
    let err = machine
        .run(&input("hello", InputCustomerTier::Free, None))
        .await
        .unwrap_err();
    assert!(matches!(err, TypedRunError::Run(_)), "{err:?}");
}

#[tokio::test]
async fn a_machine_without_declarations_runs_typed_with_json_values() {
    // `order.yml` declares no input or output: both are `Value`, the final state is typed.
    let machine = Machine::of::<order_approval::Machine>()
        .fallback_action(|_call, _ctx| Box::pin(async { Ok(ActionOutcome::Handled) }))
        .no_persistence()
        .build_typed::<order_approval::Machine>();
    let machine = match machine {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    };
    let run = machine
        .run(&serde_json::json!({"order_id": "A-1", "amount": 10}))
        .await;
    let run = run.unwrap();
    assert!(run.final_state.is_final());
    assert_eq!(run.output, run.result.output);
}

#[test]
fn building_typed_with_another_machines_types_is_an_error() {
    let err = Machine::of::<order_approval::Machine>()
        .no_persistence()
        .build_typed::<typed_io::Machine>()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot run with the types of machine `typed-io`"),
        "{err}"
    );
}

/// The user's own input type (the machine reads `input.order_id` and `input.amount`).
#[derive(Debug, serde::Serialize)]
pub struct Order {
    order_id: String,
    amount: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// The user's own output type (final states output `order_id`, `status` and `note`).
#[derive(Debug, PartialEq, serde::Deserialize)]
pub struct Outcome {
    order_id: String,
    status: String,
    #[serde(default)]
    note: Option<String>,
}

flatmachine_runtime::flatmachine!("machines/typed_user.yml", input = Order, output = Outcome);

#[tokio::test]
async fn the_users_own_types_can_be_the_input_and_output() {
    let machine = Machine::of::<typed_user::Machine>()
        .no_persistence()
        .build_typed::<typed_user::Machine>()
        .unwrap();
    let run = machine
        .run(&Order {
            order_id: "A-7".into(),
            amount: 20.0,
            note: Some("gift".into()),
        })
        .await
        .unwrap();
    assert_eq!(run.final_state, typed_user::State::Accepted);
    assert_eq!(
        run.output,
        Outcome {
            order_id: "A-7".into(),
            status: "accepted".into(),
            note: Some("gift".into()),
        }
    );
    let run = machine
        .run(&Order {
            order_id: "A-8".into(),
            amount: 500.0,
            note: None,
        })
        .await
        .unwrap();
    assert_eq!(run.final_state, typed_user::State::Review);
    assert_eq!(run.output.status, "review");
    assert_eq!(run.output.note, None);
}
