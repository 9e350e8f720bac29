//! Typed actions: `flatmachine!` generates an `Actions` trait with one method per `action:` of a
//! machine (and of its child machines); `Machine::with_actions` registers an implementation.

use flatmachine_runtime::{Context, StateError, Value};
use serde_json::json;
use std::sync::Mutex;

flatmachine_runtime::flatmachine!("machines/typed_actions.yml");
flatmachine_runtime::flatmachine!("machines/typed_actions_names.yml");

/// Prices an order, discounts large ones and writes the receipt text (for the child machine).
struct Shop {
    discount_percent: i64,
    calls: Mutex<Vec<&'static str>>,
}

impl Shop {
    fn new(discount_percent: i64) -> Self {
        Self {
            discount_percent,
            calls: Mutex::new(Vec::new()),
        }
    }

    fn called(&self, action: &'static str) {
        self.calls.lock().unwrap().push(action);
    }

    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }
}

fn int(ctx: &Context, key: &str) -> i64 {
    ctx.get(key).and_then(Value::as_i64).unwrap_or(0)
}

impl typed_actions::Actions for std::sync::Arc<Shop> {
    async fn price_items(&self, context: &mut Context) -> Result<(), StateError> {
        self.called("price-items");
        let count = int(context, "count");
        if count <= 0 {
            return Err(StateError::new("EmptyOrder", "nothing to price"));
        }
        // Yield once so the handler really is asynchronous.
        tokio::task::yield_now().await;
        let total = count * int(context, "unit_price");
        context.insert("total".into(), total.into());
        Ok(())
    }

    async fn apply_discount(&self, context: &mut Context) -> Result<(), StateError> {
        self.called("apply_discount");
        let total = int(context, "total");
        context.insert(
            "total".into(),
            (total - total * self.discount_percent / 100).into(),
        );
        Ok(())
    }

    // Runs in the child machine `typed-actions-receipt`, with the parent's handlers.
    fn send_receipt(
        &self,
        context: &mut Context,
    ) -> impl Future<Output = Result<(), StateError>> + Send {
        self.called("send_receipt");
        async move {
            let total = int(context, "total");
            context.insert("message".into(), format!("charged {total}").into());
            Ok(())
        }
    }
}

#[tokio::test]
async fn typed_handlers_run_every_action() -> Result<(), Box<dyn std::error::Error>> {
    let shop = std::sync::Arc::new(Shop::new(10));
    let machine = typed_actions::Machine::with_actions(shop.clone()).build()?;
    let result = machine.run(json!({"count": 3, "unit_price": 50})).await?;
    assert_eq!(result.final_state, "done");
    assert_eq!(
        result.output,
        json!({"total": 135, "message": "charged 135"})
    );
    assert_eq!(
        shop.calls(),
        ["price-items", "apply_discount", "send_receipt"]
    );

    // A small order skips the discount.
    let shop = std::sync::Arc::new(Shop::new(10));
    let machine = typed_actions::Machine::with_actions(shop.clone()).build()?;
    let result = machine.run(json!({"count": 2, "unit_price": 20})).await?;
    assert_eq!(result.output, json!({"total": 40, "message": "charged 40"}));
    assert_eq!(shop.calls(), ["price-items", "send_receipt"]);
    Ok(())
}

#[tokio::test]
async fn typed_handler_errors_are_routed() -> Result<(), Box<dyn std::error::Error>> {
    let machine =
        typed_actions::Machine::with_actions(std::sync::Arc::new(Shop::new(0))).build()?;
    let result = machine.run(json!({"count": 0, "unit_price": 20})).await?;
    assert_eq!(result.final_state, "failed");
    assert_eq!(
        result.output,
        json!({"error": "nothing to price", "error_type": "EmptyOrder"})
    );
    Ok(())
}

#[test]
fn the_builder_stays_configurable() -> Result<(), Box<dyn std::error::Error>> {
    // `with_actions` returns the ordinary builder: an untyped handler registered after it
    // replaces the typed one for that action.
    let machine = typed_actions::Machine::with_actions(std::sync::Arc::new(Shop::new(10)))
        .action_mut("apply_discount", |_ctx, _call| Box::pin(async { Ok(()) }))
        .no_persistence()
        .build()?;
    let result = machine.run_blocking(json!({"count": 3, "unit_price": 50}))?;
    assert_eq!(
        result.output,
        json!({"total": 150, "message": "charged 150"})
    );
    Ok(())
}

/// Action names that are not snake_case identifiers, or that collide once converted.
struct Trail;

fn push(context: &mut Context, step: &str) -> Result<(), StateError> {
    let mut trail = context
        .remove("trail")
        .and_then(|t| t.as_array().cloned())
        .unwrap_or_default();
    trail.push(step.into());
    context.insert("trail".into(), trail.into());
    Ok(())
}

impl typed_actions_names::Actions for Trail {
    // `notify_user` is already an identifier and keeps it; `notify-user` and `NotifyUser` take
    // numbered ones in file order; `self` is a keyword.
    async fn notify_user(&self, context: &mut Context) -> Result<(), StateError> {
        push(context, "notify_user")
    }
    async fn notify_user_2(&self, context: &mut Context) -> Result<(), StateError> {
        push(context, "notify-user")
    }
    async fn self_(&self, context: &mut Context) -> Result<(), StateError> {
        push(context, "self")
    }
    async fn notify_user_3(&self, context: &mut Context) -> Result<(), StateError> {
        push(context, "NotifyUser")
    }
}

#[tokio::test]
async fn awkward_action_names_get_unique_methods() -> Result<(), Box<dyn std::error::Error>> {
    let machine = typed_actions_names::Machine::with_actions(Trail).build()?;
    let result = machine.run(json!({})).await?;
    assert_eq!(
        result.output,
        json!({"trail": ["notify-user", "notify_user", "self", "NotifyUser"]})
    );
    Ok(())
}
