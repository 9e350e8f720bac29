//! The static description of a compiled machine: what the generated code provides.
//!
//! Generated code carries only data (states, templates, error routes, child references) and
//! one compiled function, the transition function, with every condition compiled to Rust. All
//! behaviour lives in this crate. See `docs/architecture.md`.

use crate::cel::CelProgram;
use crate::context::Context;
use crate::expr::ExprError;
use crate::template::TemplateValue;
use std::fmt;

/// Everything the runtime needs to know about one machine.
pub struct MachineSpec {
    /// `data.name`.
    pub name: &'static str,
    /// `spec_version` of the source file.
    pub spec_version: &'static str,
    /// The file it was compiled from (as the compiler displayed it).
    pub source: &'static str,
    /// The fingerprint of the machine's shape (`fm-shape1:…`, computed by the compiler),
    /// written into every checkpoint as `config_hash`; empty for specs made by hand (then
    /// nothing is written or checked). See `docs/signals.md`.
    pub config_hash: &'static str,
    /// States in file order.
    pub states: &'static [StateSpec],
    /// Index of the initial state.
    pub initial: usize,
    /// Initial context (templates over `input`).
    pub context: Option<TemplateValue>,
    /// `settings.max_steps`.
    pub max_steps: Option<u64>,
    /// `settings.max_concurrency`: most children a `foreach` / `machine: [..]` state runs at
    /// once (`None`: the runtime default, see `MachineBuilder::max_concurrency`).
    pub max_concurrency: Option<u64>,
    /// `settings.heartbeat_interval`: seconds between a distributed worker's heartbeats.
    pub heartbeat_interval: Option<f64>,
    /// `settings.job_lease_seconds`: how long a job this worker machine claims stays claimed.
    pub job_lease_seconds: Option<f64>,
    /// `persistence` as written.
    pub persistence: Option<PersistenceSpec>,
    /// `hooks: {class, args}`.
    pub hooks: Option<HooksSpec>,
    /// `settings.backends` (checked by the compiler against the backends this runtime has).
    pub backends: Option<BackendsSpec>,
    /// Agents by name.
    pub agents: &'static [AgentSpec],
    /// Child machines by name (`None` when the compiler could not load the child).
    pub machines: &'static [(&'static str, Option<&'static MachineSpec>)],
    /// Every `action:` name used by a state.
    pub actions: &'static [&'static str],
    /// Whether conditions are CEL (evaluated at run time by [`crate::cel::CelProgram`]) instead
    /// of simple expressions compiled to Rust.
    pub cel: bool,
    /// The Rust tools the application declared to the compiler
    /// (`flatmachine!("m.yml", tools = [..])`); `MachineBuilder::build` checks that exactly these
    /// are registered.
    pub rust_tools: &'static [&'static str],
    /// Picks the next state: `transition(state_index, context)` → next state index, or `None`
    /// when no transition matches (or the state is final).
    pub transition: fn(usize, &Context) -> Result<Option<usize>, ExprError>,
}

impl MachineSpec {
    /// A machine with no states and nothing set. Generated code lists the fields a machine sets
    /// and takes the rest from here (`..MachineSpec::DEFAULT`).
    pub const DEFAULT: MachineSpec = MachineSpec {
        name: "",
        spec_version: "",
        source: "",
        config_hash: "",
        states: &[],
        initial: 0,
        context: None,
        max_steps: None,
        max_concurrency: None,
        heartbeat_interval: None,
        job_lease_seconds: None,
        persistence: None,
        hooks: None,
        backends: None,
        agents: &[],
        machines: &[],
        actions: &[],
        cel: false,
        rust_tools: &[],
        transition: crate::generated::no_transition,
    };

    /// The state with this YAML name.
    pub fn state(&self, name: &str) -> Option<(usize, &'static StateSpec)> {
        self.states.iter().enumerate().find(|(_, s)| s.name == name)
    }

    /// The child machine with this name.
    pub fn child(&self, name: &str) -> Option<&'static MachineSpec> {
        self.machines
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, m)| *m)
    }
}

impl fmt::Debug for MachineSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachineSpec")
            .field("name", &self.name)
            .field("source", &self.source)
            .field(
                "states",
                &self.states.iter().map(|s| s.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// One state.
#[derive(Debug)]
pub struct StateSpec {
    /// YAML name.
    pub name: &'static str,
    /// `type: final`.
    pub is_final: bool,
    /// `action:`.
    pub action: Option<&'static str>,
    /// `agent:`.
    pub agent: Option<&'static str>,
    /// `machine:` (one or several, each with optional own input).
    pub machine: &'static [ChildCall],
    /// `machine:` was written as a list (results keyed by name) rather than one name.
    pub machine_list: bool,
    /// `foreach:` template.
    pub foreach: Option<TemplateValue>,
    /// `as:` (default `item`).
    pub foreach_as: &'static str,
    /// `key:` template.
    pub key: Option<TemplateValue>,
    /// `mode: any`.
    pub mode_any: bool,
    /// `timeout:` in seconds (0 or absent = none).
    pub timeout: Option<f64>,
    /// `launch:`.
    pub launch: &'static [&'static str],
    /// `launch_input:`.
    pub launch_input: Option<TemplateValue>,
    /// `input:`.
    pub input: Option<TemplateValue>,
    /// `output_to_context:`.
    pub output_to_context: Option<TemplateValue>,
    /// `output:` (final states).
    pub output: Option<TemplateValue>,
    /// `wait_for:`: the channel (a template over the context) the state waits on for a
    /// signal; `timeout` is then the most seconds to wait.
    pub wait_for: Option<TemplateValue>,
    /// `on_error` routes: error type name (`default` = any) → state index.
    pub on_error: &'static [(&'static str, usize)],
    /// `execution:`.
    pub execution: Option<ExecutionSpec>,
    /// `tool_loop:` (`true` or the object form with limits): the agent is called in a loop
    /// that runs the tools it asks for (see `docs/tools.md`).
    pub tool_loop: Option<ToolLoopSpec>,
    /// Transitions in order, with their compiled conditions (see [`StateSpec::next`]).
    pub transitions: &'static [TransitionSpec],
}

impl StateSpec {
    /// A state with only a name: not final, no work, no transitions. Generated code lists the
    /// fields a state sets and takes the rest from here (`..StateSpec::DEFAULT`).
    pub const DEFAULT: StateSpec = StateSpec {
        name: "",
        is_final: false,
        action: None,
        agent: None,
        machine: &[],
        machine_list: false,
        foreach: None,
        foreach_as: "item",
        key: None,
        mode_any: false,
        timeout: None,
        launch: &[],
        launch_input: None,
        input: None,
        output_to_context: None,
        output: None,
        wait_for: None,
        on_error: &[],
        execution: None,
        tool_loop: None,
        transitions: &[],
    };

    /// The state after this one: the target of the first transition whose condition holds
    /// (conditions are evaluated in order), or `None` when none holds or the state is final.
    pub fn next(&self, context: &Context) -> Result<Option<usize>, ExprError> {
        if self.is_final {
            return Ok(None);
        }
        for t in self.transitions {
            if t.guard.eval(t.condition, context)? {
                return Ok(Some(t.to));
            }
        }
        Ok(None)
    }
}

/// A child machine call with optional per-child input.
#[derive(Debug)]
pub struct ChildCall {
    /// Name in `machines:`.
    pub name: &'static str,
    /// Its own input (templates), if given.
    pub input: Option<TemplateValue>,
}

/// One transition, as written.
#[derive(Debug)]
pub struct TransitionSpec {
    /// Condition source text (`None` = always).
    pub condition: Option<&'static str>,
    /// Target state index.
    pub to: usize,
    /// How the condition is evaluated.
    pub guard: Guard,
}

impl TransitionSpec {
    /// An unconditional transition to state `to`.
    pub const fn always(to: usize) -> Self {
        Self {
            condition: None,
            to,
            guard: Guard::Always,
        }
    }

    /// A transition to `to` taken when the compiled simple-language condition `test` (whose
    /// source is `condition`) is true.
    pub const fn when(condition: &'static str, test: ConditionFn, to: usize) -> Self {
        Self {
            condition: Some(condition),
            to,
            guard: Guard::Compiled(test),
        }
    }

    /// A transition to `to` taken when the CEL condition `program` is true.
    pub const fn cel(condition: &'static str, program: &'static CelProgram, to: usize) -> Self {
        Self {
            condition: Some(condition),
            to,
            guard: Guard::Cel(program),
        }
    }
}

/// A simple-language condition compiled to Rust: the context → its truthiness.
pub type ConditionFn = fn(&Context) -> Result<bool, ExprError>;

/// How a transition's condition is evaluated.
#[derive(Debug, Clone, Copy)]
pub enum Guard {
    /// No condition: the transition is always taken.
    Always,
    /// A simple-language condition compiled to Rust by the compiler. An error it returns is
    /// reported as ``in expression `<condition>`: ...``.
    Compiled(ConditionFn),
    /// A CEL condition, parsed once and evaluated at run time.
    Cel(&'static CelProgram),
}

impl Guard {
    /// Evaluates the guard against the context; `source` is the condition text (for errors).
    pub fn eval(&self, source: Option<&str>, context: &Context) -> Result<bool, ExprError> {
        match self {
            Guard::Always => Ok(true),
            Guard::Compiled(test) => {
                test(context).map_err(|e| e.in_expression(source.unwrap_or_default()))
            }
            Guard::Cel(program) => program.eval(context),
        }
    }
}

/// `execution:` of a state.
#[derive(Debug)]
pub struct ExecutionSpec {
    /// `default`, `retry`, `parallel` or `mdap_voting`.
    pub kind: &'static str,
    /// Retry backoffs in seconds (`None` = the default `[2, 8, 16, 35]`).
    pub backoffs: Option<&'static [f64]>,
    /// Retry jitter factor.
    pub jitter: Option<f64>,
    /// Parallel samples.
    pub n_samples: Option<u64>,
    /// Voting margin.
    pub k_margin: Option<u64>,
    /// Voting candidates.
    pub max_candidates: Option<u64>,
    /// Retry: an empty reply counts as a failure.
    pub retry_on_empty: bool,
    /// Voting: red-flag replies longer than this many tokens (about 4 characters each).
    pub max_response_tokens: Option<u64>,
}

/// `tool_loop:` of a state. Every limit is optional (unset or `0`: no limit) and may be a
/// template over the context, rendered when the state starts.
#[derive(Debug)]
pub struct ToolLoopSpec {
    /// Most model calls (turns) in one visit.
    pub max_turns: Option<TemplateValue>,
    /// Most tool calls in one visit.
    pub max_tool_calls: Option<TemplateValue>,
    /// Most cost (in the provider's currency) of the visit's model calls.
    pub max_cost: Option<TemplateValue>,
    /// Seconds one tool call may take.
    pub tool_timeout: Option<TemplateValue>,
    /// Seconds the whole visit may take.
    pub total_timeout: Option<TemplateValue>,
    /// Tools offered (patterns; empty: every tool of the agent).
    pub allowed_tools: &'static [&'static str],
    /// Tools never offered or run (patterns; wins over `allowed_tools`).
    pub denied_tools: &'static [&'static str],
}

impl ToolLoopSpec {
    /// `tool_loop: true`: no limits, every tool.
    pub const ENABLED: ToolLoopSpec = ToolLoopSpec {
        max_turns: None,
        max_tool_calls: None,
        max_cost: None,
        tool_timeout: None,
        total_timeout: None,
        allowed_tools: &[],
        denied_tools: &[],
    };
}

/// `persistence:` of a machine.
#[derive(Debug)]
pub struct PersistenceSpec {
    /// `enabled`.
    pub enabled: bool,
    /// `backend` (`memory`, `local`, ...).
    pub backend: &'static str,
    /// `checkpoint_on` (absent = every event).
    pub checkpoint_on: Option<&'static [&'static str]>,
}

/// `settings.backends` of a machine (the spec's `BackendConfig`): which implementation each
/// kind of backend uses. `None` fields take the default (`memory`, locking `none`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendsSpec {
    /// Checkpoint storage: `memory`, `local`, `sqlite` or `redis`.
    pub persistence: Option<&'static str>,
    /// Execution locking: `none`, `local` or `redis`.
    pub locking: Option<&'static str>,
    /// Inter-machine results: `memory` or `redis`.
    pub results: Option<&'static str>,
    /// Worker registration: `memory`, `sqlite` or `redis`.
    pub registration: Option<&'static str>,
    /// Work pools: `memory`, `sqlite` or `redis`.
    pub work: Option<&'static str>,
    /// Signals of `wait_for` states: `memory`, `sqlite` or `redis`.
    pub signal: Option<&'static str>,
    /// The SQLite file registration, work and signals share (default `workers.sqlite`).
    pub sqlite_path: Option<&'static str>,
}

impl BackendsSpec {
    /// The backend names this runtime provides, per kind (what the compiler accepts; `sqlite`
    /// and `redis` need the cargo features of the same names at run time).
    pub const AVAILABLE: &'static [(&'static str, &'static [&'static str])] = &[
        ("persistence", &["memory", "local", "sqlite", "redis"]),
        ("locking", &["none", "local", "redis"]),
        ("results", &["memory", "redis"]),
        ("registration", &["memory", "sqlite", "redis"]),
        ("work", &["memory", "sqlite", "redis"]),
        ("signal", &["memory", "sqlite", "redis"]),
    ];
}

/// `hooks:` of a machine.
#[derive(Debug)]
pub struct HooksSpec {
    /// Class name, resolved through the hooks registry.
    pub class: &'static str,
    /// Constructor arguments (templates over `input`).
    pub args: Option<TemplateValue>,
}

/// An agent declared by the machine.
#[derive(Debug)]
pub struct AgentSpec {
    /// Name in `agents:`.
    pub name: &'static str,
    /// Adapter type: `flatagent` for flatagent files and inline configs, else the `type` of a
    /// `{type, ref, config}` reference (resolved through the builder's adapter registry).
    pub kind: &'static str,
    /// The compiled flatagent (`None` for other adapter types, or when it failed to load).
    pub flatagent: Option<&'static crate::agents::AgentConfig>,
    /// `ref` of a typed reference.
    pub reference: Option<&'static str>,
    /// `config` of a typed reference, as JSON.
    pub config: Option<&'static crate::agents::EmbeddedJson>,
}

/// Implemented by the generated marker type of each machine.
pub trait MachineDef: Send + Sync + 'static {
    /// The generated state enum.
    type State: Copy + Eq + fmt::Debug + Send + Sync + 'static;
    /// The machine's static description.
    fn spec() -> &'static MachineSpec;
    /// The state at this index.
    fn state_at(index: usize) -> Option<Self::State>;
}

/// A state name that the machine does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState {
    /// The name given.
    pub name: String,
    /// The machine.
    pub machine: &'static str,
}

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "machine `{}` has no state `{}`", self.machine, self.name)
    }
}

impl std::error::Error for UnknownState {}
