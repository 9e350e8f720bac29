//! Tools: `tool_loop` limits, inline tool definitions, MCP sections and the checks across them.

use super::*;

impl Cx<'_> {
    /// A state's `tool_loop:` object: every limit a non-negative number or a template over
    /// the state's scope.
    pub(super) fn tool_loop(
        &mut self,
        cfg: &crate::model::ToolLoopConfig,
        rel: &[PathSeg],
        scope: &Scope,
    ) -> crate::ir::ToolLoopIr {
        use crate::model::NumberOrTemplate;
        let mut limits = Vec::new();
        let fields: [(&'static str, &Option<NumberOrTemplate>); 5] = [
            ("max_turns", &cfg.max_turns),
            ("max_tool_calls", &cfg.max_tool_calls),
            ("max_cost", &cfg.max_cost),
            ("tool_timeout", &cfg.tool_timeout),
            ("total_timeout", &cfg.total_timeout),
        ];
        for (field, value) in fields {
            let mut frel = rel.to_vec();
            frel.push(k(field));
            match value {
                None => {}
                Some(NumberOrTemplate::Number(n)) => {
                    if !n.is_finite() || *n < 0.0 {
                        self.err(
                            format!("`tool_loop.{field}` must be a number of at least 0, got {n}"),
                            &frel,
                        )
                        .help
                        .push("0 (or leaving it out) means no limit".into());
                    } else if matches!(field, "max_turns" | "max_tool_calls") && n.fract() != 0.0 {
                        self.err(
                            format!("`tool_loop.{field}` must be a whole number, got {n}"),
                            &frel,
                        );
                    } else {
                        let v = if n.fract() == 0.0 && *n <= i64::MAX as f64 {
                            serde_json::Value::from(*n as i64)
                        } else {
                            serde_json::Value::from(*n)
                        };
                        limits.push((field, TemplateIr(v)));
                    }
                }
                Some(NumberOrTemplate::Template(src)) => {
                    limits.push((field, self.template_str(&frel, src, scope)));
                }
            }
        }
        crate::ir::ToolLoopIr {
            limits,
            allowed: cfg.allowed_tools.clone().unwrap_or_default(),
            denied: cfg.denied_tools.clone().unwrap_or_default(),
        }
    }

    /// Every `tool_loop` state calls an agent that has tools, and names only tools that exist
    /// in `allowed_tools` / `denied_tools`. MCP tools are known only at run time: for an agent
    /// with MCP servers, a bare name no known tool matches may be one of theirs (not an error),
    /// and a `server:tool` pattern must name one of its servers.
    pub(super) fn check_tool_loops(&mut self, states: &[StateIr], agents: &[AgentIr]) {
        for st in states {
            let Some(tl) = &st.tool_loop else { continue };
            let rel = vec![k("data"), k("states"), k(&st.name)];
            let at = |extra: &[&str]| {
                let mut p = rel.clone();
                p.extend(extra.iter().map(|e| k(e)));
                p
            };
            if st.def.execution.is_some() {
                self.warn_key(
                    format!(
                        "`execution` has no effect on state `{}`, which runs a tool loop",
                        st.name
                    ),
                    &at(&["execution"]),
                )
                .help
                .push("a tool loop calls its agent once per turn; retry, parallel and voting do not apply".into());
            }
            let Some(agent) = &st.def.agent else {
                self.err(
                    format!("state `{}` has `tool_loop` but calls no agent", st.name),
                    &at(&["tool_loop"]),
                )
                .help
                .push("add `agent: <name>` (a flatagent with tools), or remove `tool_loop`".into());
                continue;
            };
            let Some(AgentIr {
                kind: AgentKindIr::Flat(f),
                ..
            }) = agents.iter().find(|a| &a.key == agent)
            else {
                // Adapters and agents that failed to load are checked elsewhere / at run time.
                continue;
            };
            let mut known: Vec<&str> = f.tools.iter().map(|t| t.name.as_str()).collect();
            known.extend(self.rust_tools.iter().map(String::as_str));
            let servers: Vec<&str> = f
                .mcp
                .as_ref()
                .map(|m| m.servers.iter().map(|s| s.name.as_str()).collect())
                .unwrap_or_default();
            // Inline tools written but refused (reported already) still count as tools here,
            // so one mistake gives one error.
            let wrote_tools = matches!(
                self.unit.agents.get(agent),
                Some(AgentUnit::FlatAgent { config: Some(cfg), .. })
                    if cfg.data.tools.as_ref().is_some_and(|t| !t.is_empty())
            );
            if known.is_empty() && servers.is_empty() && !wrote_tools {
                let d = self.err(
                    format!(
                        "state `{}` has `tool_loop`, but agent `{agent}` has no tools",
                        st.name
                    ),
                    &at(&["tool_loop"]),
                );
                d.help.push(format!(
                    "give agent `{agent}` tools: `tools:` (OpenAI function format) or `mcp:` servers in its file, or Rust tools declared with `flatmachine!(\"..\", tools = [name, ..])` and registered with `MachineBuilder::tool`"
                ));
                continue;
            }
            let lists = [("allowed_tools", &tl.allowed), ("denied_tools", &tl.denied)];
            for (field, patterns) in lists {
                for (j, pattern) in patterns.iter().enumerate() {
                    let mut prel = at(&["tool_loop", field]);
                    prel.push(PathSeg::Index(j));
                    if let Some((server, _)) = pattern.split_once(':') {
                        if !server.contains('*') && !servers.contains(&server) {
                            let d = self.err(
                                format!(
                                    "`{field}` names `{pattern}`, but agent `{agent}` has no MCP server `{server}`"
                                ),
                                &prel,
                            );
                            if servers.is_empty() {
                                d.help.push(format!("`server:tool` patterns name tools of the agent's `mcp.servers`; agent `{agent}` has none"));
                            } else {
                                d.help.extend(did_you_mean(server, servers.iter().copied()));
                                d.help.push(format!(
                                    "MCP servers of agent `{agent}`: {}",
                                    servers.join(", ")
                                ));
                            }
                        }
                        continue;
                    }
                    let matched = known
                        .iter()
                        .any(|name| crate::agents::tool_pattern_matches(pattern, name));
                    if matched || !servers.is_empty() {
                        continue;
                    }
                    let d = self.err(
                        format!("`{field}` names `{pattern}`, which is no tool of agent `{agent}`"),
                        &prel,
                    );
                    d.help.extend(did_you_mean(pattern, known.iter().copied()));
                    d.help
                        .push(format!("tools of agent `{agent}`: {}", known.join(", ")));
                }
            }
        }
    }

    /// An agent's inline `tools:`: `type: function`, a unique name that no Rust tool also
    /// has, and `parameters` that are a valid JSON Schema of an object.
    pub(super) fn inline_tools(
        &mut self,
        origin: &Origin,
        agent: &str,
        tools: &[crate::model::ToolDefinitionDef],
    ) -> Vec<crate::ir::InlineToolIr> {
        let mut out: Vec<crate::ir::InlineToolIr> = Vec::new();
        for (j, t) in tools.iter().enumerate() {
            let trel = vec![k("data"), k("tools"), PathSeg::Index(j)];
            let at = |extra: &[&str]| {
                let mut p = trel.clone();
                p.extend(extra.iter().map(|e| k(e)));
                p
            };
            let push = |this: &mut Self, d: Diagnostic| {
                this.diags.push(d);
            };
            if t.kind != "function" {
                let span = self.project.span(origin, &at(&["type"]));
                push(
                    self,
                    Diagnostic::error(
                        format!(
                            "tool {j} of agent `{agent}` has `type: {}`; only `function` tools exist",
                            t.kind
                        ),
                        Some(span),
                    ),
                );
                continue;
            }
            let name = &t.function.name;
            let name_rel = at(&["function", "name"]);
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_name {
                let span = self.project.span(origin, &name_rel);
                push(
                    self,
                    Diagnostic::error(
                        format!(
                            "tool name `{name}` of agent `{agent}` is not one the providers accept"
                        ),
                        Some(span),
                    )
                    .with_help("use 1 to 64 ASCII letters, digits, `_` or `-`"),
                );
                continue;
            }
            if out.iter().any(|o| &o.name == name) {
                let span = self.project.span(origin, &name_rel);
                push(
                    self,
                    Diagnostic::error(
                        format!("agent `{agent}` defines tool `{name}` twice"),
                        Some(span),
                    ),
                );
                continue;
            }
            if self.rust_tools.iter().any(|r| r == name) {
                let span = self.project.span(origin, &name_rel);
                push(
                    self,
                    Diagnostic::error(
                        format!("tool `{name}` of agent `{agent}` has the name of a Rust tool"),
                        Some(span),
                    )
                    .with_help(format!(
                        "`{name}` is also declared in `flatmachine!(.., tools = [..])`: one name, one tool — rename one of them (an inline tool is implemented with `MachineBuilder::tool_handler`, not `tool`)"
                    )),
                );
                continue;
            }
            let parameters = match &t.function.parameters {
                Some(p) => serde_json::Value::Object(p.clone()),
                None => serde_json::json!({"type": "object", "properties": {}}),
            };
            if let Err(why) = check_tool_parameters(&parameters) {
                let span = self.project.span(origin, &at(&["function", "parameters"]));
                push(
                    self,
                    Diagnostic::error(
                        format!("tool `{name}` of agent `{agent}`: {why}"),
                        Some(span),
                    )
                    .with_help("`parameters` is the JSON Schema of the arguments object, e.g. `{type: object, properties: {path: {type: string}}, required: [path]}`"),
                );
                continue;
            }
            out.push(crate::ir::InlineToolIr {
                name: name.clone(),
                description: t.function.description.clone().unwrap_or_default(),
                parameters: parameters.to_string(),
            });
        }
        out
    }
}

/// Whether `schema` can be a tool's `parameters`: a JSON Schema (that compiles) of an object.
pub(super) fn check_tool_parameters(schema: &serde_json::Value) -> Result<(), String> {
    match schema.get("type") {
        None => {}
        Some(serde_json::Value::String(t)) if t == "object" => {}
        Some(other) => {
            return Err(format!(
                "`parameters` must describe an object (`type: object`), not `type: {other}`"
            ));
        }
    }
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| format!("`parameters` is not a valid JSON Schema: {e}"))
}

/// The `mcp:` section as the runtime gets it.
pub(super) fn lower_mcp(mcp: &crate::model::McpConfig) -> crate::ir::McpIr {
    let pairs = |m: &Option<indexmap::IndexMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    crate::ir::McpIr {
        servers: mcp
            .servers
            .iter()
            .map(|(name, s)| crate::ir::McpServerIr {
                name: name.clone(),
                command: s.command.clone(),
                args: s.args.clone().unwrap_or_default(),
                env: pairs(&s.env),
                server_url: s.server_url.clone(),
                headers: pairs(&s.headers),
                timeout: s.timeout,
            })
            .collect(),
        allow: mcp
            .tool_filter
            .as_ref()
            .and_then(|f| f.allow.clone())
            .unwrap_or_default(),
        deny: mcp
            .tool_filter
            .as_ref()
            .and_then(|f| f.deny.clone())
            .unwrap_or_default(),
        tool_prompt: Some(mcp.tool_prompt.clone()).filter(|p| !p.trim().is_empty()),
    }
}

/// The fields of a `tool_loop` state's output (besides the agent's `output` schema fields).
pub(super) const TOOL_LOOP_OUTPUT: [&str; 6] = [
    "content",
    "_tool_calls_count",
    "_tool_loop_turns",
    "_tool_loop_cost",
    "_tool_loop_stop",
    "messages",
];
