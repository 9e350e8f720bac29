//! Example machines for flatmachine, compiled with `flatmachine!`.

use flatmachine_runtime::{Context, Machine, MachineBuilder, StateError, Value};

flatmachine_runtime::flatmachine!("machines/order.yml");
flatmachine_runtime::flatmachine!("machines/launcher.yml");
flatmachine_runtime::flatmachine!("machines/review_pipeline.yml");

/// The order-approval machine with its action handlers. `crash_in_charge` makes the first card
/// charge kill the process (to show resuming from disk checkpoints).
pub fn order_machine(crash_in_charge: bool, checkpoint_dir: &std::path::Path) -> MachineBuilder {
    Machine::of::<order_approval::Machine>()
        .checkpoint_dir(checkpoint_dir.join(".checkpoints"))
        .lock_dir(checkpoint_dir.join(".locks"))
        .action_mut("validate_order", |ctx, _call| {
            Box::pin(async move {
                match ctx.get("amount").and_then(Value::as_f64) {
                    Some(a) if a > 0.0 => Ok(()),
                    _ => Err(StateError::new(
                        "InvalidOrder",
                        "amount must be a positive number",
                    )),
                }
            })
        })
        .action_mut("request_review", |ctx, _call| {
            Box::pin(async move {
                // A real system would ask a human; approve anything under 5000.
                let amount = ctx.get("amount").and_then(Value::as_f64).unwrap_or(0.0);
                ctx.insert("approved".into(), Value::Bool(amount < 5000.0));
                Ok(())
            })
        })
        .action_mut("charge_card", move |ctx: &mut Context, _call| {
            Box::pin(async move {
                let attempts = ctx.get("attempts").and_then(Value::as_i64).unwrap_or(0);
                if crash_in_charge {
                    eprintln!("charge_card: simulating a crash (the process exits now)");
                    std::process::exit(137);
                }
                if attempts < 1 {
                    // The payment provider is flaky: the first try times out.
                    return Err(StateError::new(
                        "PaymentTimeout",
                        "payment provider timed out",
                    ));
                }
                let id = ctx
                    .get("order_id")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string();
                ctx.insert(
                    "receipt".into(),
                    Value::String(format!("rcpt-{id}-{attempts}")),
                );
                Ok(())
            })
        })
        .action_mut("back_off", |ctx, _call| {
            Box::pin(async move {
                let attempts = ctx.get("attempts").and_then(Value::as_i64).unwrap_or(0) + 1;
                ctx.insert("attempts".into(), attempts.into());
                tokio::time::sleep(std::time::Duration::from_millis(10 * attempts as u64)).await;
                Ok(())
            })
        })
}
