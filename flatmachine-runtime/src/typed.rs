//! Typed runs: a machine's input and output as Rust types, its final state as the generated
//! `State` enum (docs/typed.md).
//!
//! `flatmachine!` implements [`TypedMachineDef`] for every generated `Machine` marker: `Input`
//! and `Output` are the structs generated from the YAML's `data.input` / `data.output` (in the
//! agent `output` mini-language), or [`Value`](crate::Value) where the YAML declares none. Build one with
//! [`MachineBuilder::build_typed`] and run it with [`TypedMachine::run`]:
//!
//! ```ignore
//! let triage = Machine::of::<ticket_triage::Machine>()
//!     .llm_backend(backend)
//!     .build_typed::<ticket_triage::Machine>()?;
//! let run = triage.run(&ticket_triage::Input { subject: "…".into(), body: "…".into() }).await?;
//! assert_eq!(run.final_state, ticket_triage::State::Done);
//! println!("{:?}", run.output.category);
//! ```
//!
//! The untyped path ([`Machine::run`] with a [`Value`](crate::Value)) stays as it is; a typed machine hands
//! it out with [`TypedMachine::untyped`].

use crate::engine::{BuildError, Machine, MachineBuilder, RunError, RunOptions, RunResult};
use crate::machine::MachineDef;
use serde::Deserialize as _;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// A generated machine with typed input and output (implemented by `flatmachine!` for every
/// `Machine` marker it generates).
pub trait TypedMachineDef: MachineDef {
    /// What a run takes: the generated `Input` (from `data.input`), else [`Value`](crate::Value).
    type Input: serde::Serialize + Send + Sync;
    /// What a run gives back: the generated `Output` (from `data.output`), else [`Value`](crate::Value).
    type Output: serde::de::DeserializeOwned + fmt::Debug + Send;
    /// The typed output of an agent state: the generated `agents::AnyOutput` when an agent
    /// has an `output` schema, else [`Value`](crate::Value) (and none is ever read).
    type AgentOutput: fmt::Debug + Send;

    /// The typed output of the agent `state` calls (`None`: no agent with a schema).
    fn agent_output(
        state: &str,
        output: &crate::Value,
    ) -> Option<Result<Self::AgentOutput, serde_json::Error>>;
}

/// The agent outputs of the typed run in progress on this task: (machine, state, output).
type Recorded = Arc<Mutex<Vec<(usize, &'static str, crate::Value)>>>;

tokio::task_local! {
    static AGENT_OUTPUTS: Recorded;
}

/// Called by the engine after each agent state: keeps the output when a typed run is in
/// progress on this task (nothing otherwise).
pub(crate) fn record_agent_output(
    spec: &'static crate::MachineSpec,
    state: &'static str,
    output: &crate::Value,
) {
    let _ = AGENT_OUTPUTS.try_with(|recorded| {
        if let Ok(mut r) = recorded.lock() {
            r.push((
                spec as *const crate::MachineSpec as usize,
                state,
                output.clone(),
            ));
        }
    });
}

/// A configured machine whose runs take `M::Input` and give back `M::Output` and an
/// `M::State` (cheap to clone, like [`Machine`]).
pub struct TypedMachine<M> {
    machine: Machine,
    marker: PhantomData<fn() -> M>,
}

impl<M> Clone for TypedMachine<M> {
    fn clone(&self) -> Self {
        Self {
            machine: self.machine.clone(),
            marker: PhantomData,
        }
    }
}

impl<M> fmt::Debug for TypedMachine<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedMachine")
            .field("machine", &self.machine)
            .finish()
    }
}

/// What a finished typed run returns.
pub struct TypedRun<M: TypedMachineDef> {
    /// The final output, read as `M::Output`.
    pub output: M::Output,
    /// The state the run ended in.
    pub final_state: M::State,
    /// The typed output of every agent state this run executed (this machine's, not its
    /// children's), in order. A resumed run has those from the resume on.
    pub agent_outputs: Vec<(M::State, M::AgentOutput)>,
    /// Everything else the run returned: execution id, steps, calls, cost, tokens, the final
    /// context (and the output as JSON).
    pub result: RunResult,
}

impl<M: TypedMachineDef> fmt::Debug for TypedRun<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedRun")
            .field("output", &self.output)
            .field("final_state", &self.final_state)
            .field("agent_outputs", &self.agent_outputs)
            .field("result", &self.result)
            .finish()
    }
}

/// Why a typed run did not give back a typed result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TypedRunError {
    /// The input could not be turned into JSON (a map with non-string keys, a failing
    /// `Serialize` impl). No run was started.
    #[error("machine `{machine}`: the input cannot be turned into JSON: {error}")]
    Input {
        /// The machine.
        machine: &'static str,
        /// What serde said.
        error: serde_json::Error,
    },
    /// The run failed, as an untyped run would have.
    #[error(transparent)]
    Run(#[from] RunError),
    /// An agent's output, which passed its schema, could not be read as its generated type.
    #[error(
        "machine `{machine}` (execution {}): the output of agent state `{state}` does not fit its type: {error}",
        .result.execution_id
    )]
    AgentOutput {
        /// The machine.
        machine: &'static str,
        /// The state.
        state: String,
        /// What serde said.
        error: serde_json::Error,
        /// The run's untyped result.
        result: Box<RunResult>,
    },
    /// The run finished, but its output does not fit `M::Output` (a final state's template
    /// rendered a value of another type). The untyped result is kept.
    #[error(
        "machine `{machine}` (execution {}): the output of final state `{}` does not fit the declared `Output`: {error}",
        .result.execution_id, .result.final_state
    )]
    Output {
        /// The machine.
        machine: &'static str,
        /// What serde said.
        error: serde_json::Error,
        /// The run's untyped result.
        result: Box<RunResult>,
    },
}

impl<M: TypedMachineDef> TypedMachine<M> {
    /// The typed view of `machine`, which must have been built from `M`'s description
    /// (`Machine::of::<M>()`); [`BuildError::NotThisMachine`] otherwise.
    pub fn new(machine: Machine) -> Result<Self, BuildError> {
        if !std::ptr::eq(machine.spec(), M::spec()) {
            return Err(BuildError::NotThisMachine {
                machine: machine.spec().name.to_string(),
                typed: M::spec().name.to_string(),
            });
        }
        Ok(Self {
            machine,
            marker: PhantomData,
        })
    }

    /// The untyped machine underneath (for `execute`, launches, inspection).
    pub fn untyped(&self) -> &Machine {
        &self.machine
    }

    /// Run with a new execution id.
    pub async fn run(&self, input: &M::Input) -> Result<TypedRun<M>, TypedRunError> {
        self.run_with(input, RunOptions::new()).await
    }

    /// Run with per-run options (execution id, limits; see [`RunOptions`]).
    pub async fn run_with(
        &self,
        input: &M::Input,
        options: RunOptions,
    ) -> Result<TypedRun<M>, TypedRunError> {
        let input = serde_json::to_value(input).map_err(|error| TypedRunError::Input {
            machine: M::spec().name,
            error,
        })?;
        let recorded = Recorded::default();
        let result = AGENT_OUTPUTS
            .scope(recorded.clone(), self.machine.run_with(input, options))
            .await?;
        Self::typed_with(result, &recorded)
    }

    /// Resume `execution_id` from its latest checkpoint (a run of this machine; a child's
    /// execution ends in a state of the child, which is reported as
    /// [`RunError::UnknownState`]).
    pub async fn resume(&self, execution_id: &str) -> Result<TypedRun<M>, TypedRunError> {
        let recorded = Recorded::default();
        let result = AGENT_OUTPUTS
            .scope(recorded.clone(), self.machine.resume(execution_id))
            .await?;
        Self::typed_with(result, &recorded)
    }

    /// Read an untyped result of this machine as a typed one (`agent_outputs` empty: they
    /// are not part of a `RunResult`).
    pub fn typed(result: RunResult) -> Result<TypedRun<M>, TypedRunError> {
        Self::typed_with(result, &Recorded::default())
    }

    fn typed_with(result: RunResult, recorded: &Recorded) -> Result<TypedRun<M>, TypedRunError> {
        let this = M::spec() as *const crate::MachineSpec as usize;
        let recorded = std::mem::take(&mut *recorded.lock().unwrap_or_else(|p| p.into_inner()));
        let mut agent_outputs = Vec::new();
        for (machine, state, output) in recorded {
            if machine != this {
                continue;
            }
            let read = match M::agent_output(state, &output) {
                None => continue,
                Some(read) => read,
            };
            let index = M::spec().states.iter().position(|s| s.name == state);
            match (read, index.and_then(M::state_at)) {
                (Ok(typed), Some(s)) => agent_outputs.push((s, typed)),
                (Ok(_), None) => {}
                (Err(error), _) => {
                    return Err(TypedRunError::AgentOutput {
                        machine: M::spec().name,
                        state: state.to_string(),
                        error,
                        result: Box::new(result),
                    });
                }
            }
        }
        let mut run = Self::read(result)?;
        run.agent_outputs = agent_outputs;
        Ok(run)
    }

    fn read(result: RunResult) -> Result<TypedRun<M>, TypedRunError> {
        let spec = M::spec();
        let Some(final_state) = spec
            .states
            .iter()
            .position(|s| s.name == result.final_state)
            .and_then(M::state_at)
        else {
            return Err(TypedRunError::Run(RunError::UnknownState {
                machine: spec.name.to_string(),
                execution_id: result.execution_id.clone(),
                state: result.final_state.clone(),
            }));
        };
        match M::Output::deserialize(&result.output) {
            Ok(output) => Ok(TypedRun {
                output,
                final_state,
                agent_outputs: Vec::new(),
                result,
            }),
            Err(error) => Err(TypedRunError::Output {
                machine: spec.name,
                error,
                result: Box::new(result),
            }),
        }
    }
}

impl MachineBuilder {
    /// Build the machine with typed runs: `Machine::of::<M>()…build_typed::<M>()`.
    /// [`BuildError::NotThisMachine`] when this builder was made for another machine.
    pub fn build_typed<M: TypedMachineDef>(self) -> Result<TypedMachine<M>, BuildError> {
        // The wrong types are the first thing to say: before any check of the handlers.
        if !std::ptr::eq(self.spec, M::spec()) {
            return Err(BuildError::NotThisMachine {
                machine: self.spec.name.to_string(),
                typed: M::spec().name.to_string(),
            });
        }
        TypedMachine::new(self.build()?)
    }
}

/// Lenient readers for the generated `Output` types: a final state's template whose text is
/// JSON (`{{ context.code }}` rendering `42`) gives a number or boolean where the declaration
/// says `str`; these read it back as its text.
pub mod lenient {
    use serde::{Deserialize, Deserializer, de::Error};

    /// A `str` field: a string, or a number or boolean as its text.
    pub fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(s) => Ok(s),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            serde_json::Value::Bool(b) => Ok(b.to_string()),
            other => Err(D::Error::custom(format!(
                "expected text, found {}",
                kind(&other)
            ))),
        }
    }

    /// An optional `str` field (`required: false`): also `null`.
    pub fn optional_text<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<String>, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::Null => Ok(None),
            other => text(other).map(Some).map_err(D::Error::custom),
        }
    }

    fn kind(v: &serde_json::Value) -> &'static str {
        match v {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Array(_) => "a list",
            serde_json::Value::Object(_) => "a mapping",
        }
    }
}
