// Action states, compiled conditions, an on_error map, final outputs.
flatmachine_runtime::flatmachine!("ui/machines/order_pipeline.yml");

use flatmachine_runtime::Context;
use order_pipeline::{State, transition};
use serde_json::json;

fn context(value: serde_json::Value) -> Context {
    value.as_object().unwrap().clone()
}

fn main() {
    assert_eq!(State::INITIAL, State::Start);
    assert_eq!(
        State::FINAL,
        &[State::Shipped, State::Rejected, State::Failed]
    );
    assert!(State::Failed.is_final() && !State::Charge.is_final());
    assert_eq!(State::ManualReview.to_string(), "manual_review");
    assert_eq!(
        State::from_index(State::Charge.index()),
        Some(State::Charge)
    );

    let big = context(json!({"total": 5000, "approved": false}));
    let small = context(json!({"total": 20, "approved": false}));
    let approved = context(json!({"total": 5000, "approved": true}));
    assert_eq!(
        transition(State::Validate, &big).unwrap(),
        Some(State::ManualReview)
    );
    assert_eq!(
        transition(State::Validate, &small).unwrap(),
        Some(State::Charge)
    );
    assert_eq!(
        transition(State::Validate, &approved).unwrap(),
        Some(State::Charge)
    );
    assert_eq!(
        transition(State::ManualReview, &approved).unwrap(),
        Some(State::Charge)
    );
    assert_eq!(
        transition(State::ManualReview, &big).unwrap(),
        Some(State::Rejected)
    );
    assert_eq!(transition(State::Shipped, &big).unwrap(), None);

    let spec = &order_pipeline::SPEC;
    assert_eq!(spec.name, "order-pipeline");
    let (_, validate) = spec.state("validate").unwrap();
    assert_eq!(validate.on_error.len(), 2);
    assert_eq!(
        spec.actions,
        &["charge_card", "request_review", "validate_order"]
    );
}
