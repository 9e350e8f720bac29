//! The fingerprint of a compiled machine's *shape*: what a checkpoint's meaning depends on.
//!
//! Every checkpoint carries it (the snapshot's `config_hash` field, upstream's name), and the
//! runtime refuses to resume, signal or fork a run whose checkpoint was written by a build of
//! another shape unless the caller opts in. Upstream hashes the whole config text, so a
//! comment or a prompt tweak makes every waiting run unresumable; here the hash covers what a
//! checkpoint refers to and what decides where a run goes next:
//!
//! * the machine's name, expression engine and initial state;
//! * per state, in file order: name, final or not, `action`, `agent`, the child machines it
//!   runs or launches (`machine`, `foreach` present or not, `mode`, `launch`), the `wait_for`
//!   channel template, the context keys `output_to_context` writes, `on_error` routes, and the
//!   transitions (condition text and target); a state with a `tool_loop` also has
//!   `"tool_loop": true` (its `tool_call` checkpoints hold a conversation only a loop
//!   continues; the key is absent otherwise, so machines without loops keep their hash);
//! * per declared agent: its name, kind and output schema (field names, types, enums, items);
//! * the names of the child machines (each child has a fingerprint of its own).
//!
//! Left out on purpose (they change what a step *computes*, not what a checkpoint means):
//! prompts, models, template text other than `wait_for`, inputs, timeouts, settings,
//! persistence and hooks. The text is canonical JSON (keys in the order above), hashed with
//! SHA-256; the fingerprint is [`PREFIX`] followed by the first 16 bytes in hex.

use crate::ir::{AgentKindIr, MachineIr};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// How every fingerprint starts: names the scheme, so a hash of another kind (upstream's
/// SHA-256 of the config text) is never compared with ours.
pub const PREFIX: &str = "fm-shape1:";

/// The fingerprint of `m` (`fm-shape1:` + 32 hex digits).
pub fn shape_hash(m: &MachineIr) -> String {
    let text = serde_json::to_vec(&shape(m)).unwrap_or_default();
    let digest = Sha256::digest(&text);
    let mut out = String::with_capacity(PREFIX.len() + 32);
    out.push_str(PREFIX);
    for b in digest.iter().take(16) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The canonical description the fingerprint hashes.
pub fn shape(m: &MachineIr) -> Value {
    let state_name = |i: usize| m.states.get(i).map(|s| s.name.as_str()).unwrap_or("");
    let states: Vec<Value> = m
        .states
        .iter()
        .map(|s| {
            let d = &s.def;
            let writes: Vec<&String> = d.output_to_context.iter().flat_map(|m| m.keys()).collect();
            let on_error: Vec<Value> = s
                .on_error
                .iter()
                .map(|(t, to)| json!([t, state_name(*to)]))
                .collect();
            let transitions: Vec<Value> = s
                .transitions
                .iter()
                .map(|t| {
                    json!([
                        t.condition.as_ref().map(|(src, _)| src.trim()),
                        state_name(t.to)
                    ])
                })
                .collect();
            let mut state = json!({
                "name": s.name,
                "final": s.is_final,
                "action": d.action,
                "agent": d.agent,
                "machine": d.machine.as_ref().map(|f| f.names()),
                "foreach": d.foreach.is_some(),
                "mode": d.mode.map(|m| format!("{m:?}")),
                "launch": d.launch.as_ref().map(|l| l.names()),
                "wait_for": d.wait_for,
                "writes": writes,
                "on_error": on_error,
                "transitions": transitions,
            });
            if d.tool_loop.as_ref().and_then(|t| t.config()).is_some() {
                state["tool_loop"] = Value::Bool(true);
            }
            state
        })
        .collect();
    let agents: Vec<Value> = m
        .agents
        .iter()
        .map(|a| match &a.kind {
            AgentKindIr::Flat(f) => json!({"name": a.key, "kind": "flatagent", "output": f.output}),
            AgentKindIr::Adapter { kind, .. } => json!({"name": a.key, "kind": kind}),
            AgentKindIr::Missing | AgentKindIr::NotFound(_) => json!({"name": a.key}),
        })
        .collect();
    let machines: Vec<&String> = m.children.iter().map(|(n, _)| n).collect();
    json!({
        "name": m.name,
        "engine": format!("{:?}", m.engine),
        "initial": state_name(m.initial),
        "states": states,
        "agents": agents,
        "machines": machines,
    })
}
