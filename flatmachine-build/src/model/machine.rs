//! The machine format (`spec: flatmachine`), after `flatmachine.d.ts`.

use super::{AgentWrapper, JsonMap};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A machine file: `spec: flatmachine`, `spec_version`, `data`, `metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MachineWrapper {
    /// Always `flatmachine`.
    pub spec: String,
    /// Semver of the spec the file was written for.
    pub spec_version: String,
    /// The machine.
    pub data: MachineData,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<JsonMap>,
}

/// The machine itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MachineData {
    /// Machine identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `simple` (default) or `cel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression_engine: Option<ExpressionEngine>,
    /// Initial context values (templates over `input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<JsonMap>,
    /// Agents by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<IndexMap<String, AgentRef>>,
    /// Child machines by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machines: Option<IndexMap<String, MachineRef>>,
    /// States by name, in file order.
    pub states: IndexMap<String, StateDefinition>,
    /// Settings (`max_steps`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<MachineSettings>,
    /// Checkpointing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<PersistenceConfig>,
    /// Hooks to load by class name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HooksConfig>,
    /// The `profiles.yml` of this machine's agents (relative to the machine file), as upstream
    /// machines name it; without it, a `profiles.yml` beside the machine is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<String>,
    /// The machine's input, declared in the agent `output` mini-language (a flatmachine
    /// extension, see docs/typed.md): templates may read only these `input.<field>`s, and
    /// the generated `Input` type has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<IndexMap<String, super::OutputFieldDef>>,
    /// The machine's output, declared the same way: every final state's `output:` must set
    /// exactly these keys (optional ones may be left out); the generated `Output` type has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<IndexMap<String, super::OutputFieldDef>>,
}

/// Which expression language conditions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExpressionEngine {
    /// The built-in simple language (compiled to Rust).
    Simple,
    /// Common Expression Language.
    Cel,
}

/// An agent: a path to a flatagent file, an inline flatagent, or a typed adapter reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AgentRef {
    /// Path to an agent file, relative to the machine file.
    Path(String),
    /// An inline `spec: flatagent` config.
    Inline(Box<AgentWrapper>),
    /// `{type, ref, config}` for an adapter.
    Typed(AgentRefConfig),
}

/// A typed adapter reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentRefConfig {
    /// Adapter type (`flatagent`, `smolagents`, `pi-agent`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// What the adapter loads (a path, a module, ...).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Adapter settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<JsonMap>,
}

/// A child machine: a path, an inline machine, or `{path | inline}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum MachineRef {
    /// Path to a machine file, relative to the file that names it.
    Path(String),
    /// An inline `spec: flatmachine` config.
    Inline(Box<MachineWrapper>),
    /// `{path: ...}` or `{inline: ...}`.
    Reference(MachineReference),
}

/// `{path}` or `{inline}` form of a machine reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MachineReference {
    /// Path to a machine file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// An inline machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<Box<MachineWrapper>>,
}

/// Hooks loaded by class name (resolved through the runtime's hooks registry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HooksConfig {
    /// Python file of the reference implementation (kept for compatibility; not loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Python module of the reference implementation (kept for compatibility; not loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Class name, looked up in the hooks registry.
    #[serde(rename = "class")]
    pub class: String,
    /// Constructor arguments (templates over `input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<JsonMap>,
}

/// Machine settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct MachineSettings {
    /// Most state visits in one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Most child machines one `foreach` or `machine: [..]` state runs at the same time
    /// (flatmachine extension; the reference starts them all at once and ignores the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrency: Option<u64>,
    /// What to do when parallel execution is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_fallback: Option<ParallelFallback>,
    /// Seconds between a distributed worker's heartbeats (the reference's example key; read by
    /// `DistributedWorkerHooks::for_machine`, default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.001))]
    pub heartbeat_interval: Option<f64>,
    /// Seconds a job claimed by this worker machine stays claimed before the reaper may take it
    /// back, heartbeats or not (flatmachine extension; default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.001))]
    pub job_lease_seconds: Option<f64>,
    /// Backend selection (the spec's `BackendConfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<BackendConfig>,
    /// Any other settings.
    #[serde(flatten)]
    pub extra: JsonMap,
}

/// `settings.backends`: which implementation each kind of backend uses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct BackendConfig {
    /// Checkpoint storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<String>,
    /// Execution locking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locking: Option<String>,
    /// Inter-machine results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<String>,
    /// Worker registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<String>,
    /// Work pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<String>,
    /// Signals for `wait_for` states (FlatMachines 4.2.1 key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// The SQLite file registration, work and signals share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlite_path: Option<String>,
}

/// `settings.parallel_fallback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParallelFallback {
    /// Run children one after another.
    Sequential,
    /// Fail.
    Error,
}

/// One state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct StateDefinition {
    /// `initial` or `final`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<StateType>,
    /// Agent to call (a name from `agents`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Child machine(s) to run (names from `machines`); a list runs in parallel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineField>,
    /// Hook action to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// How the agent is called (retry, parallel, voting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<ExecutionConfig>,
    /// Where errors go: a state, or a map from error type to state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
    /// Input for the agent or machine (templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<JsonMap>,
    /// Context updates from the state's output (templates over `output`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_to_context: Option<JsonMap>,
    /// Final output (final states).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<JsonMap>,
    /// Ordered transitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transitions: Option<Vec<Transition>>,
    /// Call tools until the model stops asking: `true`, or the object form with limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_loop: Option<ToolLoopField>,
    /// `single` or `multi` sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// Template yielding a list to run the machine over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreach: Option<String>,
    /// Name of the foreach item variable (default `item`).
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub as_: Option<String>,
    /// Template for each foreach result's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `settled` (all) or `any` (first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Seconds (0 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Machine(s) to start fire-and-forget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<OneOrMany>,
    /// Input for launched machines (templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_input: Option<JsonMap>,
    /// Channel to wait on for an outside signal (a template over the context): the run
    /// checkpoints and stops until a signal arrives there; the signal's data is the state's
    /// output. `timeout` is then the most seconds to wait (FlatMachines 4.2.1 key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<String>,
}

/// `tool_loop:` — `true`/`false` (spec 1.0.0) or the object form of later specs
/// (`ToolLoopStateConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ToolLoopField {
    /// `tool_loop: true` (no limits) or `false` (off).
    Enabled(bool),
    /// Limits and tool lists.
    Config(ToolLoopConfig),
}

impl ToolLoopField {
    /// The loop's settings, or `None` when it is off (`false`).
    pub fn config(&self) -> Option<ToolLoopConfig> {
        match self {
            ToolLoopField::Enabled(true) => Some(ToolLoopConfig::default()),
            ToolLoopField::Enabled(false) => None,
            ToolLoopField::Config(c) => Some(c.clone()),
        }
    }
}

/// The object form of `tool_loop:`. Numbers may be templates over the context; `0` or unset
/// means no limit.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ToolLoopConfig {
    /// Most tool calls in one visit of the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tool_calls: Option<NumberOrTemplate>,
    /// Most model calls in one visit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<NumberOrTemplate>,
    /// Tools offered (names or `server:tool` patterns with `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
    /// Tools never offered or run (wins over `allowed_tools`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_tools: Option<Vec<String>>,
    /// Seconds one tool call may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_timeout: Option<NumberOrTemplate>,
    /// Seconds the whole visit may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_timeout: Option<NumberOrTemplate>,
    /// Most cost of the visit's model calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<NumberOrTemplate>,
}

/// A number, or a template that renders to one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum NumberOrTemplate {
    /// A number.
    Number(f64),
    /// A template (`"{{ context.budget }}"`).
    Template(String),
}

/// `type: initial | final`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateType {
    /// Where the run starts.
    Initial,
    /// Where the run ends.
    Final,
}

/// `sampling: single | multi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// One sample.
    Single,
    /// Several samples.
    Multi,
}

/// `mode: settled | any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Wait for all.
    Settled,
    /// Take the first.
    Any,
}

/// A string or a list of strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One name.
    One(String),
    /// Several names.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The names, in order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// The state's `machine:` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum MachineField {
    /// One child machine.
    One(String),
    /// Children run in parallel.
    Many(Vec<MachineListItem>),
}

/// One entry of a `machine:` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum MachineListItem {
    /// A machine name.
    Name(String),
    /// A machine name with its own input.
    WithInput(MachineInput),
}

impl MachineListItem {
    /// The machine name.
    pub fn name(&self) -> &str {
        match self {
            MachineListItem::Name(n) => n,
            MachineListItem::WithInput(m) => &m.name,
        }
    }
}

impl MachineField {
    /// The machine names, in order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            MachineField::One(s) => vec![s.as_str()],
            MachineField::Many(v) => v.iter().map(MachineListItem::name).collect(),
        }
    }
}

/// Per-machine input for parallel execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MachineInput {
    /// Machine name.
    pub name: String,
    /// Its input (templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<JsonMap>,
}

/// How an agent call is executed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionConfig {
    /// Strategy.
    #[serde(rename = "type")]
    pub kind: ExecutionType,
    /// Retry: seconds between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoffs: Option<Vec<f64>>,
    /// Retry: random factor (0–1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
    /// Parallel: number of samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_samples: Option<u64>,
    /// MDAP voting: lead needed to win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_margin: Option<u64>,
    /// MDAP voting: most candidates drawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_candidates: Option<u64>,
    /// Retry: treat an empty reply as a failure (extension used by the reference's runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on_empty: Option<bool>,
    /// MDAP voting: red-flag replies longer than this many tokens (extension, as the
    /// reference's runtime reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_tokens: Option<u64>,
}

/// `execution.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionType {
    /// One call.
    Default,
    /// Retry with backoff.
    Retry,
    /// Several calls at once.
    Parallel,
    /// First-to-ahead-by-k voting.
    MdapVoting,
}

impl ExecutionType {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionType::Default => "default",
            ExecutionType::Retry => "retry",
            ExecutionType::Parallel => "parallel",
            ExecutionType::MdapVoting => "mdap_voting",
        }
    }
}

/// `on_error`: one state, or error type name → state (with `default`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OnError {
    /// Every error goes to this state.
    State(String),
    /// By error type name; `default` catches the rest.
    ByType(IndexMap<String, String>),
}

/// One transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Transition {
    /// Expression; absent means always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Target state.
    pub to: String,
}

/// Checkpointing settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PersistenceConfig {
    /// Whether to checkpoint at all.
    pub enabled: bool,
    /// `local`, `memory`, `redis`, ...
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Which events to checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_on: Option<Vec<String>>,
    /// Backend-specific settings.
    #[serde(flatten)]
    pub extra: JsonMap,
}

fn default_backend() -> String {
    "memory".to_string()
}
