//! Agent adapters: how each `agents:` entry becomes an [`AgentExecutor`].
//!
//! An [`AgentAdapterRegistry`] maps an adapter type (`flatagent`, or the `type` of a
//! `{type, ref, config}` reference) to an [`AgentAdapter`] that builds the executor. Built in:
//! [`FlatAgentAdapter`] (compiled flatagents calling an [`LlmBackend`]) and
//! [`SubprocessAdapter`] (a program speaking JSON over stdin/stdout). Plain async closures
//! registered with `MachineBuilder::agent` are wrapped in [`ClosureExecutor`], so all three run
//! through the same [`AgentExecutor`] trait.

use super::executor::{AgentExecutor, AgentResult};
use super::flatagent::FlatAgentExecutor;
use super::llm::{LlmBackend, Usage};
use crate::engine::AgentFn;
use crate::error::error_type;
use crate::machine::{AgentSpec, MachineSpec};
use crate::process::{CallError, CallLimits, ChildEnv, run_bounded};
use crate::{Context, StateError, Value};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What an adapter may use to build an executor.
pub struct AdapterEnv {
    /// The machine declaring the agent.
    pub machine: &'static MachineSpec,
    /// The backend flatagents call (the builder's, else the built-in providers).
    pub llm: Arc<dyn LlmBackend>,
}

/// Builds executors for one adapter type (the spec's `AgentAdapter`).
pub trait AgentAdapter: Send + Sync {
    /// The `type` this adapter serves.
    fn type_name(&self) -> &str;

    /// An executor for this agent (called once per agent and machine, then cached).
    fn create_executor(
        &self,
        agent: &'static AgentSpec,
        env: &AdapterEnv,
    ) -> Result<Arc<dyn AgentExecutor>, StateError>;
}

/// Adapter types → adapters. [`AgentAdapterRegistry::new`] holds the built-in `flatagent` and
/// `subprocess` adapters.
#[derive(Clone)]
pub struct AgentAdapterRegistry {
    adapters: BTreeMap<String, Arc<dyn AgentAdapter>>,
}

impl Default for AgentAdapterRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for AgentAdapterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.adapters.keys()).finish()
    }
}

impl AgentAdapterRegistry {
    /// The built-in adapters: `flatagent` and `subprocess`.
    pub fn new() -> Self {
        let mut r = Self::empty();
        r.register(Arc::new(FlatAgentAdapter));
        r.register(Arc::new(SubprocessAdapter::new("subprocess")));
        r
    }

    /// A registry with no adapters.
    pub fn empty() -> Self {
        Self {
            adapters: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) the adapter for its type.
    pub fn register(&mut self, adapter: Arc<dyn AgentAdapter>) {
        self.adapters
            .insert(adapter.type_name().to_string(), adapter);
    }

    /// The adapter for a type.
    pub fn get(&self, type_name: &str) -> Option<&Arc<dyn AgentAdapter>> {
        self.adapters.get(type_name)
    }

    /// Registered type names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.adapters.keys().map(String::as_str).collect()
    }
}

/// The `flatagent` adapter: runs the compiled config with the environment's backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatAgentAdapter;

impl AgentAdapter for FlatAgentAdapter {
    fn type_name(&self) -> &str {
        "flatagent"
    }

    fn create_executor(
        &self,
        agent: &'static AgentSpec,
        env: &AdapterEnv,
    ) -> Result<Arc<dyn AgentExecutor>, StateError> {
        let config = agent.flatagent.ok_or_else(|| match agent.reference {
            // The compiler rejects a missing agent file; a spec written by hand may still name
            // one. Fail as the reference does when it cannot open the file.
            Some(path) => StateError::new(
                "FileNotFoundError",
                format!(
                    "agent `{}` of machine `{}`: configuration file not found: {path}",
                    agent.name, env.machine.name
                ),
            ),
            None => StateError::new(
                error_type::AGENT,
                format!(
                    "agent `{}` of machine `{}` has no compiled flatagent config",
                    agent.name, env.machine.name
                ),
            ),
        })?;
        Ok(Arc::new(FlatAgentExecutor::new(config, env.llm.clone())))
    }
}

/// Runs an agent as a separate program, one process per call.
///
/// The program gets one JSON object on stdin, `{"ref", "config", "input", "context"}`, and
/// must print one JSON object on stdout: `{"output", "content", "raw", "usage", "cost",
/// "metadata"}` (all optional; `usage` may hold `api_calls`, `input_tokens`/`prompt_tokens`,
/// `output_tokens`/`completion_tokens`, `cached_tokens`). A reply `{"error": {"type",
/// "message"}}` fails the state with that error type. A non-zero exit, a reply that is not a
/// JSON object, or a run past the timeout (default 300 s; the process is killed) fails the state
/// with `AgentError` / `TimeoutError` and the program's stderr.
///
/// Limits (see `docs/security.md`): the request is written while stdout and stderr are read,
/// so a program may print before it reads; stdout is capped at
/// [`DEFAULT_MAX_OUTPUT`](crate::process::DEFAULT_MAX_OUTPUT) (32 MiB,
/// [`with_max_output`](Self::with_max_output)) — past it the program is killed and the call
/// fails with an `AgentError` naming the limit; only the last 64 KiB of stderr are kept; a
/// reply nested deeper than [`MAX_JSON_DEPTH`](super::output::MAX_JSON_DEPTH) is refused. The
/// program runs in a process group of its own, killed when the call ends (exit, timeout,
/// overflow, or the run dropping the call), so nothing it started in the background
/// survives the call.
///
/// Environment: the program gets only `PATH`, `HOME` and the locale (`LANG`, `LANGUAGE`,
/// `LC_*`) from this process, plus what the agent's `config` lists: `env` (a map of
/// variables to set), `pass_env` (names of variables to copy from this process, e.g.
/// `[OPENAI_API_KEY]`), or `inherit_env: true` to inherit the whole environment (the
/// reference's behaviour). [`with_env`](Self::with_env) sets the same for every agent of the
/// adapter. See [`ChildEnv`].
///
/// The command is the reference's `ref`, split on whitespace (`ref: "python3 agents/x.py"`),
/// unless [`SubprocessAdapter::with_command`] fixes one.
#[derive(Debug, Clone)]
pub struct SubprocessAdapter {
    type_name: String,
    command: Option<Vec<String>>,
    timeout: Duration,
    max_output: usize,
    env: ChildEnv,
}

impl SubprocessAdapter {
    /// An adapter for `type_name` that runs each agent's `ref` as the command.
    pub fn new(type_name: impl Into<String>) -> Self {
        Self {
            type_name: type_name.into(),
            command: None,
            timeout: Duration::from_secs(300),
            max_output: crate::process::DEFAULT_MAX_OUTPUT,
            env: ChildEnv::new(),
        }
    }

    /// Runs this command (program and arguments) for every agent of the type; `ref` is then
    /// only passed in the request.
    pub fn with_command<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command = Some(command.into_iter().map(Into::into).collect());
        self
    }

    /// Kills a call after this long (default 300 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Most bytes a call may print on stdout (default 32 MiB); past it the program is killed
    /// and the call fails.
    pub fn with_max_output(mut self, bytes: usize) -> Self {
        self.max_output = bytes;
        self
    }

    /// The environment every agent of this adapter gets (default: [`ChildEnv::new`], only
    /// `PATH`, `HOME` and the locale), before what each agent's `config` adds.
    pub fn with_env(mut self, env: ChildEnv) -> Self {
        self.env = env;
        self
    }
}

impl AgentAdapter for SubprocessAdapter {
    fn type_name(&self) -> &str {
        &self.type_name
    }

    fn create_executor(
        &self,
        agent: &'static AgentSpec,
        _env: &AdapterEnv,
    ) -> Result<Arc<dyn AgentExecutor>, StateError> {
        let command = match &self.command {
            Some(c) => c.clone(),
            None => agent
                .reference
                .map(|r| r.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
        };
        if command.is_empty() {
            return Err(StateError::new(
                error_type::AGENT,
                format!(
                    "agent `{}`: the `{}` adapter needs a command: give `ref: <program> [args]`",
                    agent.name, self.type_name
                ),
            ));
        }
        let env = agent_env(agent, self.env.clone())?;
        Ok(Arc::new(SubprocessExecutor {
            agent,
            command,
            limits: CallLimits {
                timeout: self.timeout,
                max_output: self.max_output,
            },
            env,
        }))
    }
}

/// `base` with what the agent's `config` adds: `env` (map), `pass_env` (list of names),
/// `inherit_env` (bool).
fn agent_env(agent: &AgentSpec, base: ChildEnv) -> Result<ChildEnv, StateError> {
    let bad = |field: &str, must: &str| {
        StateError::new(
            error_type::AGENT,
            format!("agent `{}`: `config.{field}` must be {must}", agent.name),
        )
    };
    let Some(Value::Object(config)) = agent.config.map(|c| c.value()) else {
        return Ok(base);
    };
    let mut env = match config.get("inherit_env") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => base,
        Some(Value::Bool(true)) => base.inheriting_all(),
        Some(_) => return Err(bad("inherit_env", "true or false")),
    };
    match config.get("pass_env") {
        None | Some(Value::Null) => {}
        Some(Value::Array(names)) => {
            for name in names {
                let name = name
                    .as_str()
                    .ok_or_else(|| bad("pass_env", "a list of variable names"))?;
                env = env.pass(name);
            }
        }
        Some(_) => return Err(bad("pass_env", "a list of variable names")),
    }
    match config.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vars)) => {
            for (name, value) in vars {
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => value.to_string(),
                    _ => return Err(bad("env", "a map of variable names to strings")),
                };
                env = env.set(name, value);
            }
        }
        Some(_) => return Err(bad("env", "a map of variable names to strings")),
    }
    Ok(env)
}

struct SubprocessExecutor {
    agent: &'static AgentSpec,
    command: Vec<String>,
    limits: CallLimits,
    env: ChildEnv,
}

#[async_trait]
impl AgentExecutor for SubprocessExecutor {
    async fn execute(&self, input: &Value, context: &Context) -> Result<AgentResult, StateError> {
        let name = self.agent.name;
        let program = &self.command[0];
        let fail =
            |msg: String| StateError::new(error_type::AGENT, format!("agent `{name}`: {msg}"));
        let request = serde_json::json!({
            "ref": self.agent.reference,
            "config": self.agent.config.map(|c| c.value().clone()),
            "input": input,
            "context": context,
        });
        let body = serde_json::to_vec(&request).map_err(|e| fail(e.to_string()))?;
        let mut command = tokio::process::Command::new(program);
        command.args(&self.command[1..]);
        self.env.apply_tokio(&mut command);
        let out = match run_bounded(command, body, self.limits).await {
            Ok(out) => out,
            Err(CallError::Timeout(limit)) => {
                return Err(StateError::new(
                    error_type::TIMEOUT,
                    format!(
                        "agent `{name}`: `{program}` did not answer within {limit:?} and was killed"
                    ),
                ));
            }
            Err(error) => return Err(fail(format!("`{program}`: {error}"))),
        };
        let stderr = tail(&String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(fail(format!(
                "`{program}` exited with {}; stderr: {stderr}",
                out.status
            )));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let reply: Value = super::output::parse_bounded(stdout.trim()).map_err(|e| {
            fail(format!(
                "`{program}` did not print a JSON object ({e}); stdout: {}; stderr: {stderr}",
                tail(&stdout)
            ))
        })?;
        let Value::Object(reply) = reply else {
            return Err(fail(format!(
                "`{program}` printed JSON that is not an object: {}",
                tail(&stdout)
            )));
        };
        reply_to_result(name, reply)
    }

    fn metadata(&self) -> Option<&Value> {
        None
    }
}

fn reply_to_result(
    name: &str,
    mut reply: serde_json::Map<String, Value>,
) -> Result<AgentResult, StateError> {
    if let Some(err) = reply.get("error").filter(|e| !e.is_null()) {
        let kind = err
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(error_type::AGENT);
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Err(StateError::new(kind, format!("agent `{name}`: {message}")));
    }
    let usage_obj = reply.remove("usage").unwrap_or(Value::Null);
    let count = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| usage_obj.get(*k).and_then(Value::as_u64))
            .unwrap_or(0)
    };
    let usage = Usage {
        input_tokens: count(&["input_tokens", "prompt_tokens"]),
        output_tokens: count(&["output_tokens", "completion_tokens"]),
        cached_tokens: count(&["cached_tokens"]),
    };
    let api_calls = usage_obj
        .get("api_calls")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let output = reply.remove("output").filter(|o| !o.is_null());
    if let Some(o) = &output
        && !o.is_object()
    {
        return Err(StateError::new(
            error_type::AGENT,
            format!("agent `{name}`: `output` must be an object, got {o}"),
        ));
    }
    Ok(AgentResult {
        output,
        content: reply
            .remove("content")
            .and_then(|c| c.as_str().map(str::to_string)),
        raw: reply.remove("raw").filter(|r| !r.is_null()),
        usage,
        api_calls,
        cost: reply.get("cost").and_then(Value::as_f64).unwrap_or(0.0),
        metadata: reply.remove("metadata").filter(|m| !m.is_null()),
        ..AgentResult::default()
    })
}

fn tail(text: &str) -> String {
    let t = text.trim();
    let n = t.chars().count();
    if n <= 1000 {
        return t.to_string();
    }
    let cut: String = t.chars().skip(n - 1000).collect();
    format!("…{cut}")
}

/// An async closure as an executor (`MachineBuilder::agent`).
pub struct ClosureExecutor {
    f: AgentFn,
}

impl ClosureExecutor {
    /// Wraps a closure registered with `MachineBuilder::agent`.
    pub fn new(f: AgentFn) -> Self {
        Self { f }
    }
}

#[async_trait]
impl AgentExecutor for ClosureExecutor {
    async fn execute(&self, input: &Value, context: &Context) -> Result<AgentResult, StateError> {
        let out = (self.f)(input.clone(), context.clone()).await?;
        // The closure's value is the output as given (not necessarily an object).
        Ok(AgentResult {
            output: Some(out.output),
            api_calls: out.api_calls,
            cost: out.cost,
            ..AgentResult::default()
        })
    }
}

/// A backend for when none is available: every call fails with a `ConfigurationError` that
/// says how to get one.
#[derive(Debug, Clone, Copy, Default)]
pub struct MissingBackend;

#[async_trait]
impl LlmBackend for MissingBackend {
    fn name(&self) -> &str {
        "none"
    }

    async fn complete(
        &self,
        request: &super::LlmRequest,
    ) -> Result<super::LlmResponse, super::LlmError> {
        Err(super::LlmError::new(
            super::LlmErrorKind::Configuration,
            format!(
                "no LLM backend for provider `{}`: enable the `openai`/`anthropic` features of flatmachine-runtime, or pass one with `MachineBuilder::llm_backend`",
                request.provider.as_deref().unwrap_or("(none)")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::EmbeddedJson;

    fn spec(config: &'static EmbeddedJson) -> AgentSpec {
        AgentSpec {
            name: "tool",
            kind: "subprocess",
            flatagent: None,
            reference: Some("prog"),
            config: Some(config),
        }
    }

    #[test]
    fn agent_config_lists_the_environment() {
        static CONFIG: EmbeddedJson =
            EmbeddedJson::new(r#"{"pass_env": ["A"], "env": {"B": "1", "C": 2}}"#);
        let env = agent_env(&spec(&CONFIG), ChildEnv::new()).unwrap();
        assert_eq!(env, ChildEnv::new().pass("A").set("B", "1").set("C", "2"));
        static ALL: EmbeddedJson = EmbeddedJson::new(r#"{"inherit_env": true}"#);
        assert!(
            agent_env(&spec(&ALL), ChildEnv::new())
                .unwrap()
                .inherits_all()
        );
    }

    #[test]
    fn malformed_environment_config_is_a_clear_error() {
        static BAD: [EmbeddedJson; 4] = [
            EmbeddedJson::new(r#"{"inherit_env": "yes"}"#),
            EmbeddedJson::new(r#"{"pass_env": "A"}"#),
            EmbeddedJson::new(r#"{"pass_env": [1]}"#),
            EmbeddedJson::new(r#"{"env": {"A": [1]}}"#),
        ];
        for config in &BAD {
            let error = agent_env(&spec(config), ChildEnv::new()).unwrap_err();
            assert_eq!(error.error_type, error_type::AGENT);
            assert!(error.message.contains("`config."), "{}", error.message);
            assert!(error.message.contains("must be"), "{}", error.message);
        }
    }
}
