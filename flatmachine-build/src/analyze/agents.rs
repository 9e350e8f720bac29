//! Agents: flatagent files, model profiles and provider settings.

use super::*;

impl Cx<'_> {
    /// A missing agent file is an error, also when the states that call the agent route their
    /// errors with `on_error`: every run would take that route (the reference fails at run time
    /// with `FileNotFoundError`), which is never what the file name was written for.
    pub(super) fn missing_agent_file(&mut self, key: &str, diagnostic: &Diagnostic) {
        let routed = self.unit.config.as_ref().is_some_and(|cfg| {
            cfg.data
                .states
                .values()
                .any(|s| s.agent.as_deref() == Some(key) && s.on_error.is_some())
        });
        let mut d = diagnostic.clone();
        d.severity = crate::diagnostic::Severity::Error;
        if routed {
            d.notes.push(format!(
                "every call of agent `{key}` would fail; `on_error` does not make a missing file optional"
            ));
        }
        self.diags.push(d);
    }

    /// Check and lower this machine's agents.
    pub(super) fn agents(&mut self) -> Vec<AgentIr> {
        let unit = self.unit;
        let mut out = Vec::new();
        for (key, agent) in &unit.agents {
            let kind = match agent {
                AgentUnit::Adapter {
                    kind,
                    reference,
                    config,
                } => AgentKindIr::Adapter {
                    kind: kind.clone(),
                    reference: reference.clone(),
                    config: config
                        .as_ref()
                        .map(|c| serde_json::Value::Object(c.clone()).to_string()),
                },
                AgentUnit::FlatAgent {
                    origin,
                    config: Some(cfg),
                    profiles,
                } => match self.flatagent(key, origin, cfg, *profiles) {
                    Some(f) => AgentKindIr::Flat(Box::new(f)),
                    None => AgentKindIr::Missing,
                },
                AgentUnit::FlatAgent { config: None, .. } | AgentUnit::Missing => {
                    AgentKindIr::Missing
                }
                AgentUnit::NotFound { path, diagnostic } => {
                    self.missing_agent_file(key, diagnostic);
                    AgentKindIr::NotFound(path.clone())
                }
            };
            out.push(AgentIr {
                key: key.clone(),
                kind,
            });
        }
        out
    }

    /// A flatagent: its prompts read only the agent's variables (and parse), its model
    /// resolves (through the profiles) to a name.
    pub(super) fn flatagent(
        &mut self,
        key: &str,
        origin: &Origin,
        cfg: &AgentWrapper,
        profiles: Option<ProfilesId>,
    ) -> Option<FlatAgentIr> {
        let d = &cfg.data;
        let scope = Scope::new(PROMPT_SCOPE);
        let fields = [
            ("system", d.system.as_ref()),
            ("user", Some(&d.user)),
            ("instruction_suffix", d.instruction_suffix.as_ref()),
        ];
        for (field, src) in fields {
            if let Some(src) = src {
                self.check_template_in(origin, &[k("data"), k(field)], src, Some(&scope), true);
            }
        }
        if let Some(mcp) = &d.mcp {
            self.check_template_in(
                origin,
                &[k("data"), k("mcp"), k("tool_prompt")],
                &mcp.tool_prompt,
                Some(&Scope::new(&["tools"])),
                false,
            );
        }

        let model_rel = [k("data"), k("model")];
        let model_json = self
            .project
            .node(origin, &model_rel)
            .map(|n| crate::yaml::to_json(n, &mut Vec::new()))
            .unwrap_or_default();
        let set = profiles.and_then(|p| profile_set(self.project, p));
        let resolved = crate::agents::resolve(&model_json, set.as_ref());
        let name = d
            .name
            .clone()
            .or_else(|| {
                cfg.metadata
                    .as_ref()
                    .and_then(|m| m.get("name"))
                    .and_then(|n| n.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| key.to_string());
        let mut model = ModelIr::from_merged(&resolved.merged);
        if model.is_none() && !resolved.profile_missing {
            if d.model.is_none() {
                // The reference uses the default profile for an agent without `model:`.
                let (message, help) = match &set {
                    None => (
                        format!("agent `{name}` has no `model` and no `profiles.yml` applies"),
                        "add `model:` (a profile name or `{name: ..., provider: ...}`), or put a `profiles.yml` with a `default` profile beside the agent or machine",
                    ),
                    Some(_) => (
                        format!(
                            "agent `{name}` has no `model` and its `profiles.yml` has no `default` profile"
                        ),
                        "add `model:` naming a profile, or set `default:` in the profiles file",
                    ),
                };
                self.diags.push(
                    Diagnostic::error(message, Some(self.project.key_span(origin, &[k("data")])))
                        .with_help(help),
                );
            } else {
                let span = self.project.span(origin, &model_rel);
                let help = if set.is_some() {
                    "set `name:` under `model:`, or in the profile it uses (or the `default` profile)"
                } else {
                    "set `name:` under `model:`, or name a profile of a `profiles.yml` beside the agent or machine"
                };
                self.diags.push(
                    Diagnostic::error(
                        format!("the model of agent `{name}` has no `name`"),
                        Some(span),
                    )
                    .with_help(help),
                );
            }
        }
        if let Some(m) = &mut model {
            m.profile = resolved.profile.clone();
            if !self.check_provider(origin, m, profiles) {
                return None;
            }
        }
        let model = model?;
        let metadata = cfg
            .metadata
            .as_ref()
            .map(|m| serde_json::Value::Object(m.clone()).to_string())
            .unwrap_or_else(|| "{}".to_string());
        let tools = self.inline_tools(origin, &name, d.tools.as_deref().unwrap_or_default());
        Some(FlatAgentIr {
            name,
            source: self.project.db.file(origin.file).display.clone(),
            system: d.system.clone(),
            user: d.user.clone(),
            instruction_suffix: d.instruction_suffix.clone(),
            model,
            output: d.output.clone().filter(|o| !o.is_empty()),
            metadata,
            tools,
            mcp: d.mcp.as_ref().map(lower_mcp),
        })
    }

    /// A model's provider must be one the runtime knows (the table LiteLLM's names come from),
    /// unless the model names its own `base_url`: prompts never go to a vendor nobody chose.
    pub(super) fn check_provider(
        &mut self,
        origin: &Origin,
        model: &ModelIr,
        profiles: Option<ProfilesId>,
    ) -> bool {
        let (provider, from_name) = match &model.provider {
            Some(p) => (p.clone(), false),
            None => match model.name.split_once('/') {
                Some((prefix, _)) => (prefix.to_string(), true),
                None => return true,
            },
        };
        if model
            .base_url
            .as_deref()
            .is_some_and(|b| !b.trim().is_empty())
            || flatmachine_providers::find(&provider).is_some()
        {
            return true;
        }
        // Point at where the provider was written: the agent's `model:`, else the profiles.
        let key = if from_name { "name" } else { "provider" };
        let inline = [k("data"), k("model"), k(key)];
        let span = match self.project.node(origin, &inline) {
            Some(node) => node.span,
            None => self
                .profile_key_span(profiles, model.profile.as_deref(), key)
                .unwrap_or_else(|| self.project.span(origin, &[k("data"), k("model")])),
        };
        let known: Vec<&str> = flatmachine_providers::names().collect();
        let message = if from_name {
            format!(
                "unknown provider `{provider}` (the prefix of the model name) and no `base_url`"
            )
        } else {
            format!("unknown provider `{provider}` and no `base_url`")
        };
        self.diags.push(
            Diagnostic::error(message, Some(span))
                .with_help_opt(did_you_mean(&provider, known.iter().copied()))
                .with_help(
                    "give the model a `base_url` (an OpenAI-compatible server), or use a known provider",
                )
                .with_note(format!("known providers: {}", known.join(", "))),
        );
        false
    }

    /// The span of `key` in profile `profile` (or the `override` / `default` profile when the
    /// key comes from there) of a profiles file.
    pub(super) fn profile_key_span(
        &self,
        profiles: Option<ProfilesId>,
        profile: Option<&str>,
        key: &str,
    ) -> Option<crate::source::Span> {
        let unit = self.project.profiles.get(profiles?)?;
        let cfg = unit.config.as_ref()?;
        let layers = [
            cfg.data.override_.as_deref(),
            profile,
            cfg.data.default.as_deref(),
        ];
        layers.into_iter().flatten().find_map(|name| {
            self.project
                .node(
                    &unit.origin,
                    &[k("data"), k("model_profiles"), k(name), k(key)],
                )
                .map(|n| n.span)
        })
    }
}

/// The profiles of a loaded `profiles.yml` as JSON (`None` when it did not load).
pub(super) fn profile_set(project: &Project, pid: ProfilesId) -> Option<ProfileSet> {
    let unit = project.profiles.get(pid)?;
    let cfg = unit.config.as_ref()?;
    let profiles = project
        .node(&unit.origin, &[k("data"), k("model_profiles")])
        .map(|n| crate::yaml::to_json(n, &mut Vec::new()))
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    Some(ProfileSet {
        profiles,
        default: cfg.data.default.clone(),
        override_: cfg.data.override_.clone(),
    })
}
