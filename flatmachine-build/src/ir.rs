//! The checked, lowered form of a machine that the code generator consumes.

use crate::expr::Expr;
use crate::loader::MachineId;
use crate::model::{ExpressionEngine, PersistenceConfig, StateDefinition};
use heck::{ToSnakeCase, ToUpperCamelCase};
use std::collections::{BTreeSet, HashSet};

/// Variables a template may read at one place in the YAML.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Variable names in scope.
    pub names: Vec<String>,
}

impl Scope {
    /// A scope with these names.
    pub fn new(names: &[&str]) -> Self {
        Self {
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// This scope plus one more name.
    pub fn with(&self, name: &str) -> Self {
        let mut s = self.clone();
        if !s.names.iter().any(|n| n == name) {
            s.names.push(name.to_string());
        }
        s
    }
}

/// A config value that may hold templates (checked), to embed as static data.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateIr(pub serde_json::Value);

/// One transition.
#[derive(Debug, Clone)]
pub struct TransitionIr {
    /// Target state index.
    pub to: usize,
    /// Position in the state's `transitions` list (where its condition is in the YAML).
    pub position: usize,
    /// Source text and parsed condition (`None` when it has an error, reported already).
    pub condition: Option<(String, Option<Condition>)>,
}

/// A checked transition condition.
#[derive(Debug, Clone)]
pub enum Condition {
    /// The simple language, compiled to Rust.
    Simple(Expr),
    /// CEL (`expression_engine: cel`), evaluated at run time by the `cel` crate.
    Cel(crate::expr::cel::CelCondition),
}

/// One state.
#[derive(Debug, Clone)]
pub struct StateIr {
    /// Position in the machine's `states` (file order).
    pub index: usize,
    /// YAML name.
    pub name: String,
    /// Rust enum variant name.
    pub variant: String,
    /// `type: final`.
    pub is_final: bool,
    /// The state as written.
    pub def: StateDefinition,
    /// Checked `input` templates.
    pub input: Option<TemplateIr>,
    /// Checked `output_to_context` templates.
    pub output_to_context: Option<TemplateIr>,
    /// Checked final `output` templates.
    pub output: Option<TemplateIr>,
    /// Checked `launch_input` templates.
    pub launch_input: Option<TemplateIr>,
    /// Checked `foreach` template.
    pub foreach: Option<TemplateIr>,
    /// Checked foreach `key` template.
    pub key: Option<TemplateIr>,
    /// Checked `wait_for` channel template.
    pub wait_for: Option<TemplateIr>,
    /// Error type name (`default` for the catch-all) → target state index.
    pub on_error: Vec<(String, usize)>,
    /// Transitions in order.
    pub transitions: Vec<TransitionIr>,
    /// `tool_loop:` (`None`: no loop).
    pub tool_loop: Option<ToolLoopIr>,
}

/// A state's `tool_loop:`, checked.
#[derive(Debug, Clone, Default)]
pub struct ToolLoopIr {
    /// Limits by field name (`max_turns`, ...), each a number or a checked template.
    pub limits: Vec<(&'static str, TemplateIr)>,
    /// `allowed_tools`.
    pub allowed: Vec<String>,
    /// `denied_tools`.
    pub denied: Vec<String>,
}

/// One machine, ready for code generation.
#[derive(Debug, Clone)]
pub struct MachineIr {
    /// Index in the project.
    pub id: MachineId,
    /// Rust module name.
    pub module: String,
    /// `data.name`.
    pub name: String,
    /// `spec_version`.
    pub spec_version: String,
    /// The file it came from (as displayed).
    pub source: String,
    /// Index of the initial state.
    pub initial: usize,
    /// States in file order.
    pub states: Vec<StateIr>,
    /// Checked initial context templates.
    pub context: Option<TemplateIr>,
    /// `settings.max_steps`.
    pub max_steps: Option<u64>,
    /// `settings.max_concurrency`.
    pub max_concurrency: Option<u64>,
    /// `settings.heartbeat_interval` (seconds).
    pub heartbeat_interval: Option<f64>,
    /// `settings.job_lease_seconds`.
    pub job_lease_seconds: Option<f64>,
    /// `persistence`.
    pub persistence: Option<PersistenceConfig>,
    /// `hooks.class` and checked `hooks.args`.
    pub hooks: Option<(String, Option<TemplateIr>)>,
    /// `settings.backends`, checked against the runtime's backends.
    pub backends: Option<crate::model::BackendConfig>,
    /// Child machines: name → module name of the compiled child (None when it failed to load).
    pub children: Vec<(String, Option<String>)>,
    /// Agents, in `agents:` order.
    pub agents: Vec<AgentIr>,
    /// Every `action:` name used.
    pub actions: BTreeSet<String>,
    /// Expression engine.
    pub engine: ExpressionEngine,
    /// Names of the Rust tools the application registers (`flatmachine!(.., tools = [..])`).
    pub rust_tools: Vec<String>,
    /// The fingerprint of the machine's shape (see `crate::fingerprint`), written into every
    /// checkpoint as `config_hash`.
    pub config_hash: String,
    /// `data.input`: the declared machine input (docs/typed.md), checked against the templates.
    pub input: Option<indexmap::IndexMap<String, crate::model::OutputFieldDef>>,
    /// `data.output`: the declared machine output, checked against the final states.
    pub output: Option<indexmap::IndexMap<String, crate::model::OutputFieldDef>>,
}

/// One entry of a machine's `agents:`.
#[derive(Debug, Clone)]
pub struct AgentIr {
    /// The name in `agents:`.
    pub key: String,
    /// What it is.
    pub kind: AgentKindIr,
}

/// How an agent is given.
#[derive(Debug, Clone)]
pub enum AgentKindIr {
    /// A flatagent, compiled.
    Flat(Box<FlatAgentIr>),
    /// A typed reference `{type, ref, config}`, resolved at run time.
    Adapter {
        /// `type`.
        kind: String,
        /// `ref`.
        reference: Option<String>,
        /// `config`, as JSON text.
        config: Option<String>,
    },
    /// A flatagent that could not be loaded (errors say why).
    Missing,
    /// The agent file did not exist (a warning, see `analyze`): fails at run time.
    NotFound(String),
}

/// A flatagent, checked and resolved.
#[derive(Debug, Clone)]
pub struct FlatAgentIr {
    /// `data.name`, else `metadata.name`, else the name in `agents:`.
    pub name: String,
    /// The file it came from (as displayed).
    pub source: String,
    /// `data.system`.
    pub system: Option<String>,
    /// `data.user`.
    pub user: String,
    /// `data.instruction_suffix`.
    pub instruction_suffix: Option<String>,
    /// The resolved model.
    pub model: crate::agents::ModelIr,
    /// `data.output` (`None` or empty: free text).
    pub output: Option<indexmap::IndexMap<String, crate::model::OutputFieldDef>>,
    /// `metadata` as JSON text (`{}` when absent).
    pub metadata: String,
    /// `data.tools`, each `parameters` checked as a JSON Schema.
    pub tools: Vec<InlineToolIr>,
    /// `data.mcp`.
    pub mcp: Option<McpIr>,
}

/// One inline tool (`data.tools[i]`), checked.
#[derive(Debug, Clone, PartialEq)]
pub struct InlineToolIr {
    /// `function.name`.
    pub name: String,
    /// `function.description` (empty when absent).
    pub description: String,
    /// `function.parameters` as JSON text.
    pub parameters: String,
}

/// A flatagent's `mcp:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct McpIr {
    /// `servers`, in file order.
    pub servers: Vec<McpServerIr>,
    /// `tool_filter.allow`.
    pub allow: Vec<String>,
    /// `tool_filter.deny`.
    pub deny: Vec<String>,
    /// `tool_prompt` (a template over `tools`; `None` when empty).
    pub tool_prompt: Option<String>,
}

/// One MCP server.
#[derive(Debug, Clone, PartialEq)]
pub struct McpServerIr {
    /// Its name under `servers`.
    pub name: String,
    /// `command` (stdio).
    pub command: Option<String>,
    /// `args`.
    pub args: Vec<String>,
    /// `env`.
    pub env: Vec<(String, String)>,
    /// `server_url` (streamable HTTP).
    pub server_url: Option<String>,
    /// `headers`.
    pub headers: Vec<(String, String)>,
    /// `timeout` in seconds.
    pub timeout: Option<f64>,
}

const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

fn sanitize(s: String, prefix: &str) -> String {
    let mut s: String = s
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) || !s.is_ascii() {
        let ascii: String = s
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        s = format!("{prefix}{ascii}");
    }
    if KEYWORDS.contains(&s.as_str()) {
        s.push('_');
    }
    s
}

/// A snake_case Rust identifier for a name.
pub fn snake_ident(name: &str) -> String {
    sanitize(name.to_snake_case(), "m_")
}

/// UpperCamelCase enum variant names for state names, unique (a suffix resolves clashes).
pub fn variant_names(names: &[&str]) -> Vec<String> {
    let mut used = HashSet::new();
    names
        .iter()
        .map(|n| {
            let base = sanitize(n.to_upper_camel_case(), "S");
            let mut v = base.clone();
            let mut i = 2;
            while !used.insert(v.clone()) {
                v = format!("{base}{i}");
                i += 1;
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(
            variant_names(&["start", "do-thing", "do_thing", "self", "1st", "Self"]),
            vec!["Start", "DoThing", "DoThing2", "Self_", "S1st", "Self_2"]
        );
        assert_eq!(snake_ident("writer-critic-loop"), "writer_critic_loop");
        assert_eq!(snake_ident("match"), "match_");
    }
}
