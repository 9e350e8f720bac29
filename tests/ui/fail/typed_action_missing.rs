// Implementing a machine's `Actions` trait without one of its actions is a compile error.
use flatmachine_runtime::{Context, StateError};

flatmachine_runtime::flatmachine!("ui/machines/typed_actions_missing.yml");

struct Handlers;

impl typed_actions_missing::Actions for Handlers {
    async fn validate_order(&self, context: &mut Context) -> Result<(), StateError> {
        let _ = context;
        Ok(())
    }
}

fn main() {
    let _ = typed_actions_missing::Machine::with_actions(Handlers);
}
