// Implementing a machine's `Actions` trait without one of its actions is a compile error.
use flatmachine_runtime::{Context, StateError};

// trybuild compiles this file in its own crate, `target/tests/trybuild/flatmachine-tests`, which is
// the CARGO_MANIFEST_DIR the path is relative to.
flatmachine_runtime::flatmachine!("../../../../tests/ui/machines/typed_actions_missing.yml");

struct Handlers;

impl typed_actions_missing::Actions for Handlers {
    async fn validate_order(&self, context: Context) -> Result<Context, StateError> {
        Ok(context)
    }
}

fn main() {
    let _ = typed_actions_missing::Machine::with_actions(Handlers);
}
