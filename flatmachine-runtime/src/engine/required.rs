//! What `MachineBuilder::build` checks before a run can start: every `action:` and `agent:` of
//! the machine and of every child machine has something to run it. Without this a missing
//! handler is found only when a run reaches the state — after the LLM calls before it.

use crate::agents::AgentAdapterRegistry;
use crate::machine::MachineSpec;
use std::collections::HashMap;
use std::fmt;

/// What a state needs and the builder was not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingHandler {
    /// The machine (`data.name`) whose state uses it.
    pub machine: String,
    /// The first state that uses it.
    pub state: String,
    /// An action or an agent.
    pub kind: HandlerKind,
    /// The action or agent name.
    pub name: String,
    /// For an agent of another adapter type: that type.
    pub adapter_type: Option<String>,
}

/// The kind of a [`MissingHandler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerKind {
    /// `action: name`.
    Action,
    /// `agent: name`.
    Agent,
}

impl fmt::Display for MissingHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            HandlerKind::Action => write!(
                f,
                "action `{}` (state `{}` of `{}`): register it with `action_mut`, implement the generated `Actions` trait, or handle it in a `fallback_action` or in hooks",
                self.name, self.state, self.machine
            ),
            HandlerKind::Agent => match &self.adapter_type {
                Some(t) => write!(
                    f,
                    "agent `{}` (state `{}` of `{}`) has type `{t}`, which has no adapter: register one with `agent_adapter`, or serve the agent with `agent(\"{}\", ..)`",
                    self.name, self.state, self.machine, self.name
                ),
                None => write!(
                    f,
                    "agent `{}` (state `{}` of `{}`) is not declared by the machine: serve it with `agent(\"{}\", ..)`",
                    self.name, self.state, self.machine, self.name
                ),
            },
        }
    }
}

/// What the builder was given, as far as handlers go.
pub(super) struct Available<'a> {
    /// Named action handlers.
    pub actions: &'a HashMap<String, super::handlers::ActionFn>,
    /// Named agent closures.
    pub agents: &'a HashMap<String, super::handlers::AgentFn>,
    /// Agent adapters by type.
    pub adapters: &'a AgentAdapterRegistry,
    /// A fallback action handler, or unhandled actions ignored: every action is taken.
    pub catch_all_actions: bool,
    /// Hooks given in Rust for the root machine (children use their YAML `hooks:` class).
    pub root_hooks: bool,
}

/// Every action and agent of `spec` and its children (each machine once) that nothing runs.
pub(super) fn missing_handlers(
    spec: &'static MachineSpec,
    have: &Available,
) -> Vec<MissingHandler> {
    let mut out = Vec::new();
    let mut seen: Vec<*const MachineSpec> = Vec::new();
    walk(spec, have, true, &mut seen, &mut out);
    out
}

fn walk(
    spec: &'static MachineSpec,
    have: &Available,
    root: bool,
    seen: &mut Vec<*const MachineSpec>,
    out: &mut Vec<MissingHandler>,
) {
    if seen.contains(&(spec as *const _)) {
        return;
    }
    seen.push(spec as *const _);
    // Hooks may take any action in `on_action`, so a machine with hooks needs no named ones.
    let hooks = spec.hooks.is_some() || (root && have.root_hooks);
    let mut reported: Vec<(HandlerKind, &str)> = Vec::new();
    for state in spec.states {
        if let Some(action) = state.action
            && !have.catch_all_actions
            && !hooks
            && !have.actions.contains_key(action)
            && !reported.contains(&(HandlerKind::Action, action))
        {
            reported.push((HandlerKind::Action, action));
            out.push(MissingHandler {
                machine: spec.name.to_string(),
                state: state.name.to_string(),
                kind: HandlerKind::Action,
                name: action.to_string(),
                adapter_type: None,
            });
        }
        if let Some(agent) = state.agent
            && !have.agents.contains_key(agent)
            && !reported.contains(&(HandlerKind::Agent, agent))
            && let Some(adapter_type) = agent_gap(spec, agent, have.adapters)
        {
            reported.push((HandlerKind::Agent, agent));
            out.push(MissingHandler {
                machine: spec.name.to_string(),
                state: state.name.to_string(),
                kind: HandlerKind::Agent,
                name: agent.to_string(),
                adapter_type,
            });
        }
    }
    for (_, child) in spec.machines {
        if let Some(child) = child {
            walk(child, have, false, seen, out);
        }
    }
}

/// Why an agent with no closure cannot run: `Some(Some(type))` when no adapter takes its type,
/// `Some(None)` when the machine does not declare it; `None` when it can run.
fn agent_gap(
    spec: &MachineSpec,
    agent: &str,
    adapters: &AgentAdapterRegistry,
) -> Option<Option<String>> {
    let Some(decl) = spec.agents.iter().find(|a| a.name == agent) else {
        return Some(None);
    };
    adapters
        .get(decl.kind)
        .is_none()
        .then(|| Some(decl.kind.to_string()))
}

/// The message of `BuildError::MissingHandlers`.
pub(super) fn message(machine: &str, missing: &[MissingHandler]) -> String {
    let mut text = format!(
        "machine `{machine}`: nothing runs {} the machine uses:",
        if missing.len() == 1 {
            "one name".to_string()
        } else {
            format!("{} names", missing.len())
        }
    );
    for m in missing {
        text.push_str("\n  - ");
        text.push_str(&m.to_string());
    }
    text
}
