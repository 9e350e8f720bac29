//! [`FlatAgentExecutor`]: one flatagent call — render the prompts, ask the model, read the reply.

use super::config::{AgentConfig, ModelParams, Prompt};
use super::executor::{AgentCall, AgentExecutor, AgentResult, Billing};
use super::llm::{LlmBackend, LlmRequest, LlmResponse, Message, ResponseFormat, Role, Usage};
use super::output;
use crate::error::error_type;
use crate::{Context, StateError, Value};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// Runs a compiled flatagent against an [`LlmBackend`].
///
/// Messages are `[system, user]`: the rendered `system` prompt (default "You are a helpful
/// assistant."), and the rendered `user` prompt followed by a blank line and the rendered
/// `instruction_suffix` when there is one. Prompts see `input` (the state's rendered input),
/// `model` (the resolved model config), `tools` (`[]`) and `tools_prompt` (`""`).
///
/// An input named `messages` holding a list of `{role, content}` is a conversation, as the
/// reference's `FlatAgent.call(messages=…)` takes it: the messages are sent between the system
/// prompt and the user prompt (`[system, …messages, user]`; the user prompt only when the
/// input has other keys), and prompts do not see `input.messages`. Roles are `system`, `user`
/// and `assistant`; contents are text. Anything else in `messages` is an `AgentError` naming
/// the item.
///
/// A reply that arrives but does not parse or validate still counts as a call: its usage and
/// cost travel on the error ([`StateError::billed`]).
pub struct FlatAgentExecutor {
    config: &'static AgentConfig,
    backend: Arc<dyn LlmBackend>,
    metadata: Value,
}

impl FlatAgentExecutor {
    /// An executor for `config` that calls `backend`.
    pub fn new(config: &'static AgentConfig, backend: Arc<dyn LlmBackend>) -> Self {
        let metadata = config.metadata.value().clone();
        Self {
            config,
            backend,
            metadata,
        }
    }

    /// The compiled agent.
    pub fn config(&self) -> &'static AgentConfig {
        self.config
    }

    /// The request one call with this input would send (prompts rendered, parameters set).
    pub fn request(&self, input: &Value) -> Result<LlmRequest, StateError> {
        self.request_at(None, input)
    }

    /// [`request`](Self::request) made on behalf of `state` (put on the request).
    pub fn request_at(&self, state: Option<&str>, input: &Value) -> Result<LlmRequest, StateError> {
        self.request_with_tools(state, input, &Value::Array(Vec::new()), "")
    }

    /// [`request_at`](Self::request_at) with the prompt variables `tools` (a list of tool
    /// objects) and `tools_prompt` set, as a `tool_loop` state renders its opening messages.
    pub(crate) fn request_with_tools(
        &self,
        state: Option<&str>,
        input: &Value,
        tools: &Value,
        tools_prompt: &str,
    ) -> Result<LlmRequest, StateError> {
        let c = self.config;
        let m = &c.model;
        let (history, prompt_input) = split_messages(c, input)?;
        let vars = minijinja::context! {
            input => match &prompt_input {
                Some(stripped) => crate::template::json_to_mj(stripped),
                None => crate::template::json_to_mj(input),
            },
            model => crate::template::json_to_mj(&model_var(m)),
            tools => crate::template::json_to_mj(tools),
            tools_prompt => tools_prompt,
        };
        let mut system = match c.system {
            Some(p) => render(c, "system", p, &vars)?,
            None => AgentConfig::DEFAULT_SYSTEM.to_string(),
        };
        let mut user = render(c, "user", c.user, &vars)?;
        if let Some(suffix) = c.instruction_suffix {
            let suffix = render(c, "instruction_suffix", suffix, &vars)?;
            if !suffix.is_empty() {
                user.push_str("\n\n");
                user.push_str(&suffix);
            }
        }
        let response_format = match c.output {
            Some(fields) => {
                let mentions_json = |s: &str| s.to_ascii_lowercase().contains("json");
                if !mentions_json(&system) && !mentions_json(&user) {
                    if !system.is_empty() && !system.ends_with('\n') {
                        system.push('\n');
                    }
                    system.push_str(&output::json_instruction(fields));
                }
                ResponseFormat::Json {
                    name: schema_name(c.name),
                    schema: output::json_schema(fields),
                }
            }
            None => ResponseFormat::Text,
        };
        let mut messages = Vec::with_capacity(2 + history.len());
        messages.push(Message::new(Role::System, system));
        // With a conversation, the user prompt follows only when there is other input.
        let send_user = history.is_empty()
            || prompt_input
                .as_ref()
                .and_then(Value::as_object)
                .is_some_and(|o| !o.is_empty());
        messages.extend(history);
        if send_user {
            messages.push(Message::new(Role::User, user));
        }
        let mut req = self.model_request(state, messages);
        req.response_format = response_format;
        Ok(req)
    }

    /// A request with these messages and the agent's model settings (no tools, free text),
    /// made on behalf of `state`.
    pub(crate) fn model_request(&self, state: Option<&str>, messages: Vec<Message>) -> LlmRequest {
        let c = self.config;
        let m = &c.model;
        let mut req = LlmRequest::new(m.wire_name(), messages);
        req.provider = m.provider_name().map(str::to_string);
        req.temperature = m.temperature.unwrap_or(ModelParams::DEFAULT_TEMPERATURE);
        req.max_tokens = m.max_tokens;
        req.top_p = m.top_p;
        req.top_k = m.top_k;
        req.frequency_penalty = m.frequency_penalty;
        req.presence_penalty = m.presence_penalty;
        req.seed = m.seed;
        req.base_url = super::endpoints::from_environment(m.profile)
            .or_else(|| m.base_url.map(str::to_string));
        req.api_key_env = m.api_key_env.map(str::to_string);
        req.timeout = m
            .timeout
            .filter(|t| t.is_finite() && *t > 0.0)
            .map(Duration::from_secs_f64);
        req.max_retries = m.max_retries.map(|n| n.min(u64::from(u32::MAX)) as u32);
        req.json_mode = m.json_mode;
        req.prompt_caching = m.prompt_caching;
        req.agent = Some(c.name.to_string());
        req.state = state.map(str::to_string);
        req.profile = m.profile.map(str::to_string);
        // `stream` is read from the resolved profile as written (no typed field needed).
        req.stream = m.raw.value().get("stream").and_then(Value::as_bool) == Some(true);
        req
    }

    /// The backend this executor calls.
    pub(crate) fn backend(&self) -> &Arc<dyn LlmBackend> {
        &self.backend
    }

    /// What a reply was billed: one call, its usage and cost.
    fn billing(&self, reply: &LlmResponse) -> Billing {
        Billing {
            api_calls: 1,
            usage: reply.usage,
            cost: cost(&self.config.model, reply.usage),
        }
    }

    /// Reads a reply: the structured output when the agent has an `output` schema (an
    /// `OutputParseError`/`OutputValidationError` when it does not fit), usage and cost.
    pub fn read_reply(&self, reply: LlmResponse) -> Result<AgentResult, StateError> {
        let c = self.config;
        let output = match c.output {
            Some(fields) => Some(output::parse_output(c.name, fields, &reply.content)?),
            None => None,
        };
        let cost = cost(&c.model, reply.usage);
        let mut raw = serde_json::Map::new();
        if let Some(model) = &reply.model {
            raw.insert("model".into(), Value::String(model.clone()));
        }
        if let Some(reason) = &reply.finish_reason {
            raw.insert("finish_reason".into(), Value::String(reason.clone()));
        }
        raw.insert("attempts".into(), Value::from(reply.attempts));
        raw.insert(
            "backend".into(),
            Value::String(self.backend.name().to_string()),
        );
        Ok(AgentResult {
            output,
            content: Some(reply.content),
            raw: Some(Value::Object(raw)),
            usage: reply.usage,
            api_calls: 1,
            cost,
            metadata: Some(self.metadata.clone()),
            tool_calls: reply.tool_calls,
            finish_reason: reply.finish_reason,
        })
    }
}

impl std::fmt::Debug for FlatAgentExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatAgentExecutor")
            .field("agent", &self.config.name)
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl FlatAgentExecutor {
    /// One call: render, send, read. A reply that fails to parse or validate carries its
    /// billing on the error.
    async fn call(&self, state: Option<&str>, input: &Value) -> Result<AgentResult, StateError> {
        let request = self.request_at(state, input)?;
        let reply = crate::trace::observe(&request, self.backend.complete(&request))
            .await
            .map_err(|e| {
                let mut err = StateError::from(e);
                err.message = format!("agent `{}`: {}", self.config.name, err.message);
                err
            })?;
        let billing = self.billing(&reply);
        self.read_reply(reply).map_err(|e| e.with_billing(billing))
    }
}

#[async_trait]
impl AgentExecutor for FlatAgentExecutor {
    async fn execute(&self, input: &Value, _context: &Context) -> Result<AgentResult, StateError> {
        self.call(None, input).await
    }

    async fn execute_for(
        &self,
        call: &AgentCall<'_>,
        input: &Value,
        _context: &Context,
    ) -> Result<AgentResult, StateError> {
        self.call(Some(call.state), input).await
    }

    fn metadata(&self) -> Option<&Value> {
        Some(&self.metadata)
    }

    fn tool_agent(&self) -> Option<&dyn super::ToolAgent> {
        Some(self)
    }
}

/// Cost of one call: per-token prices from the model config when given, otherwise the
/// reference's flat estimate `(input × 0.001 + output × 0.002) / 1000`.
pub fn cost(model: &ModelParams, usage: Usage) -> f64 {
    let (i, o) = (usage.input_tokens as f64, usage.output_tokens as f64);
    crate::cost::rounded(
        match (model.input_cost_per_token, model.output_cost_per_token) {
            (None, None) => (i * 0.001 + o * 0.002) / 1000.0,
            (pi, po) => i * pi.unwrap_or(0.0) + o * po.unwrap_or(0.0),
        },
    )
}

/// The `model` prompt variable: the resolved config with the computed fields filled in (the
/// reference's merge of its raw config and its attributes).
fn model_var(m: &ModelParams) -> Value {
    let mut map = match m.raw.value() {
        Value::Object(o) => o.clone(),
        _ => serde_json::Map::new(),
    };
    let num = |x: Option<f64>| x.map_or(Value::Null, Value::from);
    map.insert("name".into(), Value::String(m.qualified_name()));
    map.insert(
        "temperature".into(),
        Value::from(m.temperature.unwrap_or(ModelParams::DEFAULT_TEMPERATURE)),
    );
    map.insert(
        "max_tokens".into(),
        m.max_tokens.map_or(Value::Null, Value::from),
    );
    map.insert("top_p".into(), num(m.top_p));
    map.insert("top_k".into(), m.top_k.map_or(Value::Null, Value::from));
    map.insert("frequency_penalty".into(), num(m.frequency_penalty));
    map.insert("presence_penalty".into(), num(m.presence_penalty));
    map.insert("seed".into(), m.seed.map_or(Value::Null, Value::from));
    map.insert(
        "base_url".into(),
        m.base_url.map_or(Value::Null, |s| Value::String(s.into())),
    );
    Value::Object(map)
}

pub(crate) fn render(
    c: &AgentConfig,
    field: &str,
    prompt: &Prompt,
    vars: &minijinja::Value,
) -> Result<String, StateError> {
    let fail = |msg: String| {
        StateError::new(
            error_type::TEMPLATE,
            format!("agent `{}` ({}): `{field}` prompt: {msg}", c.name, c.source),
        )
    };
    let tmpl = prompt.template().map_err(|e| fail(e.to_string()))?;
    tmpl.render(vars).map_err(|e| fail(e.to_string()))
}

/// Takes a conversation out of the input: `(messages, Some(input without "messages"))` when
/// the input has a `messages` key, `(vec![], None)` when it does not. `null` and `[]` are no
/// conversation (the key is still hidden from the prompts, as in the reference).
fn split_messages(
    c: &AgentConfig,
    input: &Value,
) -> Result<(Vec<Message>, Option<Value>), StateError> {
    let Some(map) = input.as_object().filter(|m| m.contains_key("messages")) else {
        return Ok((Vec::new(), None));
    };
    let mut rest = map.clone();
    let given = rest.remove("messages").unwrap_or(Value::Null);
    let fail = |what: String| {
        StateError::new(
            error_type::AGENT,
            format!(
                "agent `{}`: input `messages` must be a list of {{role, content}} (role system, \
                 user or assistant; content text): {what}",
                c.name
            ),
        )
    };
    let items = match given {
        Value::Null => Vec::new(),
        Value::Array(items) => items,
        other => {
            let kind = match other {
                Value::String(_) => "a string (was it rendered without `| tojson`?)",
                Value::Object(_) => "a mapping",
                _ => "a scalar",
            };
            return Err(fail(format!("got {kind}")));
        }
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(mut item) = item else {
            return Err(fail(format!("item {i} is not a mapping")));
        };
        let role = match item.get("role").and_then(Value::as_str) {
            Some("system") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some(other) => {
                let shown: String = other.chars().take(40).collect();
                return Err(fail(format!("item {i} has role `{shown}`")));
            }
            None => return Err(fail(format!("item {i} has no text `role`"))),
        };
        let content = match item.remove("content") {
            Some(Value::String(text)) => text,
            Some(Value::Null) | None if role == Role::Assistant => String::new(),
            Some(_) => return Err(fail(format!("item {i} has a `content` that is not text"))),
            None => return Err(fail(format!("item {i} has no `content`"))),
        };
        messages.push(Message::new(role, content));
    }
    Ok((messages, Some(Value::Object(rest))))
}

/// A provider-safe schema name: ASCII letters, digits, `_` and `-`, at most 64 characters.
fn schema_name(agent: &str) -> String {
    let s: String = agent
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() { "output".into() } else { s }
}
