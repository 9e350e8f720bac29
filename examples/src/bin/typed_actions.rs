//! The order-approval machine again, with its action handlers written as a type instead of
//! closures: `flatmachine!` generates `order_approval::Actions`, one method per `action:` in the
//! YAML, so forgetting a handler (or misspelling one) is a compile error rather than an
//! `UnhandledActionError` at run time. Compare `order_machine` in `src/lib.rs` (the untyped
//! route: `MachineBuilder::action_mut(name, closure)`). Each method changes the context in
//! place; what it wrote stays also when it returns an error.
//!
//! `cargo run -p flatmachine-examples --bin typed_actions`

use flatmachine_examples::order_approval;
use flatmachine_runtime::{Context, StateError, Value};
use serde_json::json;

/// The order-approval handlers. Fields are shared by every run of the built machine.
struct OrderActions {
    /// Orders up to this amount are approved on manual review.
    review_limit: f64,
}

impl order_approval::Actions for OrderActions {
    async fn validate_order(&self, context: &mut Context) -> Result<(), StateError> {
        match context.get("amount").and_then(Value::as_f64) {
            Some(a) if a > 0.0 => Ok(()),
            _ => Err(StateError::new(
                "InvalidOrder",
                "amount must be a positive number",
            )),
        }
    }

    async fn request_review(&self, context: &mut Context) -> Result<(), StateError> {
        // A real system would ask a human; approve anything under the limit.
        let amount = context.get("amount").and_then(Value::as_f64).unwrap_or(0.0);
        context.insert("approved".into(), Value::Bool(amount < self.review_limit));
        Ok(())
    }

    async fn charge_card(&self, context: &mut Context) -> Result<(), StateError> {
        let attempts = context.get("attempts").and_then(Value::as_i64).unwrap_or(0);
        if attempts < 1 {
            // The payment provider is flaky: the first try times out.
            return Err(StateError::new(
                "PaymentTimeout",
                "payment provider timed out",
            ));
        }
        let id = context
            .get("order_id")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        context.insert(
            "receipt".into(),
            Value::String(format!("rcpt-{id}-{attempts}")),
        );
        Ok(())
    }

    async fn back_off(&self, context: &mut Context) -> Result<(), StateError> {
        let attempts = context.get("attempts").and_then(Value::as_i64).unwrap_or(0) + 1;
        context.insert("attempts".into(), attempts.into());
        tokio::time::sleep(std::time::Duration::from_millis(10 * attempts as u64)).await;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join("flatmachine-typed-actions-example");
    let machine = order_approval::Machine::with_actions(OrderActions {
        review_limit: 5000.0,
    })
    .checkpoint_dir(dir.join(".checkpoints"))
    .lock_dir(dir.join(".locks"))
    .build()?;

    for (order_id, amount) in [("B-1", 250), ("B-2", 1250), ("B-3", 9000), ("B-4", -5)] {
        let result = machine
            .run(json!({"order_id": order_id, "amount": amount}))
            .await?;
        println!(
            "{order_id} ({amount}): `{}` after {} steps: {}",
            result.final_state,
            result.steps,
            serde_json::to_string(&result.output)?
        );
    }
    Ok(())
}
