//! [`MachineInvoker`]: how a parent machine runs its children (`machine:`, `foreach`,
//! `launch:`). The default, [`InProcessInvoker`], runs them as tasks in this process.

use super::budget::AgentCallBudget;
use super::machine::Machine;
use super::result::RunResult;
use crate::{StateError, Value};
use async_trait::async_trait;

/// A child run asked for by a parent machine.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InvokeRequest {
    /// The parent machine (configured: handlers, backends); builds the child in-process.
    pub parent: Machine,
    /// The child's name in the parent's `machines:`.
    pub machine: &'static str,
    /// The child's execution id.
    pub execution_id: String,
    /// The parent's execution id (lineage, written to the child's checkpoints).
    pub parent_execution_id: Option<String>,
    /// The child's input.
    pub input: Value,
    /// Continue the child from its checkpoints if it has any, instead of starting it: set
    /// when the parent is a resumed run (its `machine:` / `foreach:` children and its
    /// launches then continue where they were; a finished child returns its recorded result).
    pub resume: bool,
    /// The run tree's agent-call budget the child draws from. An invoker that runs the child
    /// elsewhere passes its [`remaining`](AgentCallBudget::remaining) calls on and
    /// [`record`](AgentCallBudget::record)s the calls the child reports.
    pub agent_calls: AgentCallBudget,
    /// The batches an in-process child and its parent save for each other (see `handover`);
    /// other invokers ignore them.
    pub(crate) hand_offs: super::handover::HandOffs,
}

/// Runs child machines for a parent: returns the child's result once it finished.
///
/// The engine calls it for every `machine:` / `foreach` child (and waits) and for every
/// `launch:` child (in a background task, whose result it then writes to the result backend).
#[async_trait]
pub trait MachineInvoker: Send + Sync {
    /// Runs the child described by `request` to its end.
    async fn invoke(&self, request: InvokeRequest) -> Result<RunResult, StateError>;
}

/// Runs children inside this process, sharing the parent's handlers, agents, hooks registry,
/// checkpoint store, lock and result backend (the default invoker).
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcessInvoker;

#[async_trait]
impl MachineInvoker for InProcessInvoker {
    async fn invoke(&self, request: InvokeRequest) -> Result<RunResult, StateError> {
        let parent = request.parent.clone();
        parent
            .run_child_in_process(request)
            .await
            .map_err(|e| e.to_state_error())
    }
}
