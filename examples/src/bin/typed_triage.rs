//! Typed runs: the ticket-triage machine declares its input and output in the YAML
//! (`data.input`, `data.output`, in the agent `output` mini-language), so `flatmachine!`
//! generates `ticket_triage::Input` and `ticket_triage::Output`, checks at compile time that
//! the templates read only declared input fields and that every final state outputs the
//! declared keys, and `build_typed` gives a machine whose runs take an `Input` and give back an
//! `Output` and the final `ticket_triage::State`. A hook reads the classifier's output as the
//! generated `ClassifierOutput` with `agents::AnyOutput::of_state`. See docs/typed.md.
//!
//! Offline: the agents answer from a `ScriptedBackend` (no key, no network).
//!
//! `cargo run -p flatmachine-examples --bin typed_triage`

use flatmachine_runtime::agents::{LlmRequest, LlmResponse, Role, ScriptedBackend};
use flatmachine_runtime::hooks::{HookError, MachineHooks};
use flatmachine_runtime::{Context, Machine, Value, flatmachine};
use std::sync::Arc;

flatmachine!("machines/triage/machine.yml");

use ticket_triage::agents::AnyOutput;
use ticket_triage::{Input, InputCustomer, InputCustomerTier, OutputCategory, State};

/// Prints what the classifier decided, typed, as each `classify` state ends.
struct ShowClassification;

#[async_trait::async_trait]
impl MachineHooks for ShowClassification {
    async fn on_state_exit(
        &self,
        state: &str,
        _context: &mut Context,
        output: &mut Option<Value>,
    ) -> Result<(), HookError> {
        if let Some(output) = output
            && let Some(read) = AnyOutput::of_state(state, output)
        {
            match read.map_err(|e| HookError::failed(e.to_string()))? {
                AnyOutput::Classifier(c) => {
                    eprintln!("  classifier: {:?}, urgent: {}", c.category, c.urgent)
                }
            }
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let triage = Machine::of::<ticket_triage::Machine>()
        .llm_backend(Arc::new(scripted()))
        .hooks(Arc::new(ShowClassification))
        .no_persistence()
        .build_typed::<ticket_triage::Machine>()?;

    let tickets = [
        Input {
            subject: "Charged twice".into(),
            body: "My card was charged twice for March.".into(),
            customer: InputCustomer {
                name: "Ada".into(),
                tier: InputCustomerTier::Pro,
            },
            priority: Some(1),
        },
        Input {
            subject: "Export to CSV?".into(),
            body: "Can I export my reports to CSV?".into(),
            customer: InputCustomer {
                name: "Grace".into(),
                tier: InputCustomerTier::Free,
            },
            priority: None,
        },
    ];
    for ticket in &tickets {
        eprintln!("ticket: {}", ticket.subject);
        let run = triage.run(ticket).await?;
        // The typed outputs of the agent states the run went through, in order.
        for (state, output) in &run.agent_outputs {
            eprintln!("  agent output of `{state}`: {output:?}");
        }
        // `final_state` is the generated enum and `output` the generated struct: a `match`
        // over them is checked by rustc.
        let queue = match (run.final_state, run.output.category) {
            (State::Answered, _) => "answered automatically",
            (_, OutputCategory::Billing) => "billing team",
            (_, OutputCategory::Bug) => "engineering",
            (_, OutputCategory::Question) => "support",
        };
        println!(
            "{} → {queue} (state `{}`, priority {}, urgent: {}){}",
            ticket.subject,
            run.final_state,
            run.output.priority,
            run.output.urgent,
            run.output
                .reply
                .as_deref()
                .map(|r| format!("\n  reply: {r}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Deterministic stand-ins for the two agents.
fn scripted() -> ScriptedBackend {
    ScriptedBackend::new(|req: &LlmRequest| {
        let system = req.message(Role::System).unwrap_or_default();
        let user = req.message(Role::User).unwrap_or_default();
        let reply = if system.contains("You sort") {
            let (category, urgent) = if user.contains("charged") {
                ("billing", user.contains("tier: pro"))
            } else if user.contains("error") || user.contains("crash") {
                ("bug", true)
            } else {
                ("question", false)
            };
            serde_json::json!({"category": category, "urgent": urgent}).to_string()
        } else {
            "Yes: open a report, choose Export, then CSV. It downloads right away.".to_string()
        };
        Ok(LlmResponse::text(reply).with_usage(60, 20))
    })
}
