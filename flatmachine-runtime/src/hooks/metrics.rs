//! [`MetricsHooks`]: thread-safe execution counters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde_json::json;

use super::{HookError, MachineHooks};
use crate::engine::ActionCall;
use crate::{Context, StateError, Value};

/// Counts state entries, transitions, errors and actions. Never changes the context, output or next state.
///
/// Thread-safe; clones share the same counters, so keep a clone to read the metrics of a run
/// that owns another (for instance through [`super::HooksRegistry::register_instance`]).
/// Like the reference, a transition is counted with the target it was given (as redirected by
/// hooks before this one in a [`super::CompositeHooks`]), and an error is counted only when
/// `on_error` reaches this hook.
#[derive(Debug, Clone, Default)]
pub struct MetricsHooks {
    inner: Arc<Mutex<MetricsSnapshot>>,
}

/// A copy of the counters of a [`MetricsHooks`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Entries per state.
    pub state_counts: BTreeMap<String, u64>,
    /// Transitions per `(from, to)`.
    pub transition_counts: BTreeMap<(String, String), u64>,
    /// Errors per state.
    pub error_counts: BTreeMap<String, u64>,
    /// All state entries.
    pub total_states_executed: u64,
    /// All errors.
    pub error_count: u64,
    /// Runs per action (every action, whoever handled it).
    pub action_counts: BTreeMap<String, u64>,
    /// Failed runs per action (an unhandled action included).
    pub action_error_counts: BTreeMap<String, u64>,
}

impl MetricsSnapshot {
    /// Entries of `state`.
    pub fn state_count(&self, state: &str) -> u64 {
        self.state_counts.get(state).copied().unwrap_or(0)
    }

    /// Transitions from `from` to `to`.
    pub fn transition_count(&self, from: &str, to: &str) -> u64 {
        self.transition_counts
            .get(&(from.to_string(), to.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Errors in `state`.
    pub fn errors_in(&self, state: &str) -> u64 {
        self.error_counts.get(state).copied().unwrap_or(0)
    }

    /// Runs of `action` (every handler kind counts).
    pub fn action_count(&self, action: &str) -> u64 {
        self.action_counts.get(action).copied().unwrap_or(0)
    }

    /// Failed runs of `action`.
    pub fn action_errors(&self, action: &str) -> u64 {
        self.action_error_counts.get(action).copied().unwrap_or(0)
    }

    /// The reference's `get_metrics()` shape: `state_counts`, `transition_counts` (keys
    /// `"from->to"`), `total_states_executed`, `error_count`; plus `error_counts` per state.
    pub fn to_json(&self) -> Value {
        let transitions: serde_json::Map<String, Value> = self
            .transition_counts
            .iter()
            .map(|((from, to), n)| (format!("{from}->{to}"), json!(n)))
            .collect();
        json!({
            "state_counts": self.state_counts,
            "transition_counts": transitions,
            "total_states_executed": self.total_states_executed,
            "error_count": self.error_count,
            "error_counts": self.error_counts,
            "action_counts": self.action_counts,
            "action_error_counts": self.action_error_counts,
        })
    }
}

impl MetricsHooks {
    /// Hooks with all counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds from YAML `hooks.args`; the class takes no args (a non-empty map is an error).
    pub fn from_args(args: &serde_json::Map<String, Value>) -> Result<Self, HookError> {
        match args.keys().next() {
            None => Ok(Self::new()),
            Some(key) => Err(HookError::invalid_args(
                "MetricsHooks",
                format!("unknown arg `{key}` (MetricsHooks takes no args)"),
            )),
        }
    }

    /// A copy of the current counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        self.lock().clone()
    }

    /// Sets every counter back to zero.
    pub fn reset(&self) {
        *self.lock() = MetricsSnapshot::default();
    }

    fn lock(&self) -> MutexGuard<'_, MetricsSnapshot> {
        // Counters stay meaningful even if a thread panicked while holding the lock.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl MachineHooks for MetricsHooks {
    async fn on_state_enter(&self, state: &str, _context: &mut Context) -> Result<(), HookError> {
        let mut m = self.lock();
        *m.state_counts.entry(state.to_string()).or_default() += 1;
        m.total_states_executed += 1;
        Ok(())
    }

    async fn on_transition(
        &self,
        from: &str,
        to: &str,
        _context: &mut Context,
    ) -> Result<String, HookError> {
        let mut m = self.lock();
        *m.transition_counts
            .entry((from.to_string(), to.to_string()))
            .or_default() += 1;
        Ok(to.to_string())
    }

    async fn on_action_done(
        &self,
        call: &ActionCall,
        _context: &Context,
        error: Option<&StateError>,
    ) {
        let mut m = self.lock();
        *m.action_counts.entry(call.action.to_string()).or_default() += 1;
        if error.is_some() {
            *m.action_error_counts
                .entry(call.action.to_string())
                .or_default() += 1;
        }
    }

    async fn on_error(
        &self,
        state: &str,
        _error: &StateError,
        _context: &mut Context,
    ) -> Result<Option<String>, HookError> {
        let mut m = self.lock();
        *m.error_counts.entry(state.to_string()).or_default() += 1;
        m.error_count += 1;
        Ok(None)
    }
}
