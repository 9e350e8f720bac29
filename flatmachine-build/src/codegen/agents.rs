//! Agents: the static `AgentSpec`s of flatagents (inline and in machines), their output fields, inline tools and MCP sections.

use super::*;

/// The statics of flatagent number `i` (key `key` in `agents:`): its prompts, metadata, raw
/// model config and the `static AGENT_<i>: AgentConfig` itself, whose name is returned.
pub(super) fn flat_agent_statics(
    i: usize,
    key: &str,
    f: &crate::ir::FlatAgentIr,
    rt: &TokenStream,
    statics: &mut Vec<TokenStream>,
) -> Ident {
    let id = format_ident!("AGENT_{}", i);
    let prompt = |suffix: &str, src: &str, statics: &mut Vec<TokenStream>| {
        let pid = format_ident!("AGENT_{}_{}", i, suffix);
        statics.push(quote! {
            static #pid: #rt::agents::Prompt = #rt::agents::Prompt::new(#src);
        });
        pid
    };
    let system = opt(f
        .system
        .as_deref()
        .map(|src| prompt("SYSTEM", src, statics))
        .map(|p| quote!(&#p)));
    let user = prompt("USER", &f.user, statics);
    let suffix = opt(f
        .instruction_suffix
        .as_deref()
        .map(|src| prompt("SUFFIX", src, statics))
        .map(|p| quote!(&#p)));
    let meta_id = format_ident!("AGENT_{}_METADATA", i);
    let raw_id = format_ident!("AGENT_{}_MODEL", i);
    let meta = &f.metadata;
    let raw = f.model.raw.to_string();
    statics.push(quote! {
        static #meta_id: #rt::agents::EmbeddedJson = #rt::agents::EmbeddedJson::new(#meta);
        static #raw_id: #rt::agents::EmbeddedJson = #rt::agents::EmbeddedJson::new(#raw);
    });
    let md = &f.model;
    let s = |v: &Option<String>| opt(v.as_ref().map(|v| quote!(#v)));
    let fl = |v: Option<f64>| opt(v.map(f64_lit));
    let uu = |v: Option<u64>| opt(v.map(|v| quote!(#v)));
    let (provider, name, base_url, api_key_env) = (
        s(&md.provider),
        &md.name,
        s(&md.base_url),
        s(&md.api_key_env),
    );
    let (temperature, top_p, fp, pp) = (
        fl(md.temperature),
        fl(md.top_p),
        fl(md.frequency_penalty),
        fl(md.presence_penalty),
    );
    let (icost, ocost, timeout) = (
        fl(md.input_cost_per_token),
        fl(md.output_cost_per_token),
        fl(md.timeout),
    );
    let (max_tokens, top_k, max_retries) = (uu(md.max_tokens), uu(md.top_k), uu(md.max_retries));
    let seed = opt(md.seed.map(|v| quote!(#v)));
    let json_mode = opt(md.json_mode.as_deref().and_then(|m| match m {
        "json_schema" => Some(quote!(#rt::agents::JsonMode::JsonSchema)),
        "json_object" => Some(quote!(#rt::agents::JsonMode::JsonObject)),
        _ => None,
    }));
    let prompt_caching = md.prompt_caching;
    let profile = s(&md.profile);
    let output = opt(f.output.as_ref().map(|o| {
        let fields = o.iter().map(|(n, d)| output_field(n, d, rt));
        quote!(&[#(#fields),*])
    }));
    let tools = inline_tools(i, &f.tools, rt, statics);
    let mcp = opt(f.mcp.as_ref().map(|m| mcp_spec(i, m, rt, statics)));
    let agent_name = &f.name;
    let source = &f.source;
    let doc = format!(" Agent `{key}` (from `{source}`).");
    statics.push(quote! {
        #[doc = #doc]
        static #id: #rt::agents::AgentConfig = #rt::agents::AgentConfig {
            name: #agent_name,
            source: #source,
            system: #system,
            user: &#user,
            instruction_suffix: #suffix,
            model: #rt::agents::ModelParams {
                provider: #provider,
                name: #name,
                temperature: #temperature,
                max_tokens: #max_tokens,
                top_p: #top_p,
                top_k: #top_k,
                frequency_penalty: #fp,
                presence_penalty: #pp,
                seed: #seed,
                base_url: #base_url,
                api_key_env: #api_key_env,
                input_cost_per_token: #icost,
                output_cost_per_token: #ocost,
                timeout: #timeout,
                max_retries: #max_retries,
                json_mode: #json_mode,
                prompt_caching: #prompt_caching,
                profile: #profile,
                raw: &#raw_id,
            },
            output: #output,
            metadata: &#meta_id,
            tools: #tools,
            mcp: #mcp,
        };
    });
    id
}

/// The module `flatagent!` generates for one flatagent: its `AgentConfig`, the typed output
/// (`Output`, when the agent has an `output` schema; else the reply text) and `Agent`, a
/// callable handle on a backend.
pub fn generate_agent(
    module: &str,
    f: &crate::ir::FlatAgentIr,
    opts: &CodegenOptions,
) -> TokenStream {
    let rt = &opts.runtime_path;
    let mut statics = Vec::new();
    let id = flat_agent_statics(0, module, f, rt, &mut statics);
    let mut outputs = OutputTypes::new(rt);
    let (output_ty, read) = match &f.output {
        Some(o) => {
            outputs.agent(module, &f.source, &id, o);
            let name = format_ident!("{}Output", crate::ir::variant_names(&[module]).remove(0));
            (
                quote!(agents::#name),
                quote! {
                    result.parse::<Output>().map_err(|e| {
                        #rt::StateError::new(
                            "OutputParseError",
                            format!("agent `{}`: the output does not fit `Output`: {e}", CONFIG.name),
                        )
                    })
                },
            )
        }
        None => (
            quote!(::std::string::String),
            quote!(Ok(result.content.unwrap_or_default())),
        ),
    };
    let outputs = outputs.finish();
    let tracking = tracking_items(&opts.track_files);
    let name = format_ident!("{}", module);
    let doc = format!(
        " Agent `{}` (from `{}`), compiled by `flatagent!`.",
        f.name, f.source
    );
    quote! {
        #[doc = #doc]
        #[allow(clippy::all, dead_code)]
        pub mod #name {
            #(#tracking)*
            #(#statics)*

            /// The compiled agent: prompts, resolved model, output fields.
            pub static CONFIG: &#rt::agents::AgentConfig = &#id;

            #outputs

            /// What a call returns: the typed structured output, or the reply text for an agent
            /// without an `output` schema.
            pub type Output = #output_ty;

            /// The agent, callable from Rust on an LLM backend.
            pub struct Agent {
                executor: #rt::agents::FlatAgentExecutor,
            }

            impl Agent {
                /// The agent on `backend` (a `ScriptedBackend`, a `ProviderRouter`, ...).
                pub fn new(backend: ::std::sync::Arc<dyn #rt::agents::LlmBackend>) -> Self {
                    Self {
                        executor: #rt::agents::FlatAgentExecutor::new(&#id, backend),
                    }
                }

                /// The agent on the built-in providers (keys and endpoints from the
                /// environment, as in a machine).
                pub fn from_env() -> Self {
                    Self::new(#rt::agents::default_backend())
                }

                /// One call with `input` (the prompts' `input`): the typed output.
                pub async fn call(
                    &self,
                    input: &#rt::Value,
                ) -> ::core::result::Result<Output, #rt::StateError> {
                    let result = self.call_result(input).await?;
                    #read
                }

                /// One call with `input`: the whole result (output, text, usage, cost).
                pub async fn call_result(
                    &self,
                    input: &#rt::Value,
                ) -> ::core::result::Result<#rt::agents::AgentResult, #rt::StateError> {
                    use #rt::agents::AgentExecutor as _;
                    self.executor.execute(input, &#rt::Context::new()).await
                }

                /// The executor underneath (to build requests without sending them).
                pub fn executor(&self) -> &#rt::agents::FlatAgentExecutor {
                    &self.executor
                }
            }
        }
    }
}

/// What a machine's agents generate.
pub(super) struct AgentItems {
    /// `static AGENT_n: AgentConfig` and the statics it refers to.
    pub(super) statics: Vec<TokenStream>,
    /// One `AgentSpec` per entry of `agents:`.
    pub(super) specs: Vec<TokenStream>,
    /// `pub mod agents` with a typed struct per structured output (empty when there is none).
    pub(super) outputs: TokenStream,
    /// The name of `agents::AnyOutput`, when an agent has an `output` schema.
    pub(super) any_output: Option<Ident>,
}

pub(super) fn f64_lit(v: f64) -> TokenStream {
    let lit = proc_macro2::Literal::f64_suffixed(v);
    quote!(#lit)
}

pub(super) fn agent_items(m: &MachineIr, rt: &TokenStream) -> AgentItems {
    use crate::ir::AgentKindIr;
    let mut statics = Vec::new();
    let mut specs = Vec::new();
    let mut outputs = OutputTypes::new(rt);
    let mut typed_agents = Vec::new();
    for (i, agent) in m.agents.iter().enumerate() {
        let key = &agent.key;
        match &agent.kind {
            AgentKindIr::Flat(f) => {
                let id = flat_agent_statics(i, key, f, rt, &mut statics);
                let source = &f.source;
                specs.push(quote!(#rt::machine::AgentSpec { name: #key, kind: "flatagent", flatagent: Some(&#id), reference: None, config: None }));
                if let Some(o) = &f.output {
                    typed_agents.push((key.as_str(), outputs.agent(key, source, &id, o)));
                }
            }
            AgentKindIr::Adapter {
                kind,
                reference,
                config,
            } => {
                let reference = opt(reference.as_ref().map(|r| quote!(#r)));
                let config = opt(config.as_ref().map(|c| {
                    let cid = format_ident!("AGENT_{}_CONFIG", i);
                    statics.push(quote! {
                        static #cid: #rt::agents::EmbeddedJson = #rt::agents::EmbeddedJson::new(#c);
                    });
                    quote!(&#cid)
                }));
                specs.push(quote!(#rt::machine::AgentSpec { name: #key, kind: #kind, flatagent: None, reference: #reference, config: #config }));
            }
            AgentKindIr::Missing => {
                specs.push(quote!(#rt::machine::AgentSpec { name: #key, kind: "flatagent", flatagent: None, reference: None, config: None }));
            }
            AgentKindIr::NotFound(path) => {
                specs.push(quote!(#rt::machine::AgentSpec { name: #key, kind: "flatagent", flatagent: None, reference: Some(#path), config: None }));
            }
        }
    }
    let any_output = typed_io::any_output(m, &typed_agents, &mut outputs);
    AgentItems {
        statics,
        specs,
        outputs: outputs.finish(),
        any_output,
    }
}

pub(super) fn output_kind(t: crate::model::OutputType) -> Ident {
    use crate::model::OutputType as T;
    format_ident!(
        "{}",
        match t {
            T::Str => "Str",
            T::Int => "Int",
            T::Float => "Float",
            T::Bool => "Bool",
            T::Json => "Json",
            T::List => "List",
            T::Object => "Object",
        }
    )
}

/// An `OutputField` literal (nested fields inline: constant data, promoted to statics).
pub(super) fn output_field(
    name: &str,
    d: &crate::model::OutputFieldDef,
    rt: &TokenStream,
) -> TokenStream {
    let kind = output_kind(d.kind);
    let description = opt(d.description.as_ref().map(|s| quote!(#s)));
    let enums: Vec<&String> = d.enum_values.iter().flatten().collect();
    let required = d.required.unwrap_or(true);
    let items = opt(d.items.as_ref().map(|it| {
        let f = output_field("", it, rt);
        quote!(&#f)
    }));
    let props: Vec<TokenStream> = d
        .properties
        .iter()
        .flatten()
        .map(|(n, p)| output_field(n, p, rt))
        .collect();
    quote!(#rt::agents::OutputField {
        name: #name,
        kind: #rt::agents::OutputKind::#kind,
        description: #description,
        enum_values: &[#(#enums),*],
        required: #required,
        items: #items,
        properties: &[#(#props),*],
    })
}

/// `&[InlineToolSpec, ..]` for an agent's inline tools (each schema in its own static).
pub(super) fn inline_tools(
    agent: usize,
    tools: &[crate::ir::InlineToolIr],
    rt: &TokenStream,
    statics: &mut Vec<TokenStream>,
) -> TokenStream {
    let specs = tools.iter().enumerate().map(|(j, t)| {
        let pid = format_ident!("AGENT_{}_TOOL_{}_PARAMETERS", agent, j);
        let (name, description, parameters) = (&t.name, &t.description, &t.parameters);
        statics.push(quote! {
            static #pid: #rt::agents::EmbeddedJson = #rt::agents::EmbeddedJson::new(#parameters);
        });
        quote!(#rt::tools::InlineToolSpec { name: #name, description: #description, parameters: &#pid })
    });
    let specs: Vec<TokenStream> = specs.collect();
    quote!(&[#(#specs),*])
}

/// `&McpSpec` for an agent's `mcp:` section (its tool prompt in its own static).
pub(super) fn mcp_spec(
    agent: usize,
    mcp: &crate::ir::McpIr,
    rt: &TokenStream,
    statics: &mut Vec<TokenStream>,
) -> TokenStream {
    let sid = format_ident!("AGENT_{}_MCP", agent);
    let tool_prompt = opt(mcp.tool_prompt.as_ref().map(|src| {
        let pid = format_ident!("AGENT_{}_TOOL_PROMPT", agent);
        statics.push(quote! {
            static #pid: #rt::agents::Prompt = #rt::agents::Prompt::new(#src);
        });
        quote!(&#pid)
    }));
    let servers = mcp.servers.iter().map(|s| {
        let name = &s.name;
        let command = opt(s.command.as_ref().map(|c| quote!(#c)));
        let args = &s.args;
        let env = s.env.iter().map(|(k, v)| quote!((#k, #v)));
        let url = opt(s.server_url.as_ref().map(|u| quote!(#u)));
        let headers = s.headers.iter().map(|(k, v)| quote!((#k, #v)));
        let timeout = opt(s.timeout.map(f64_lit));
        quote!(#rt::tools::McpServerSpec {
            name: #name,
            command: #command,
            args: &[#(#args),*],
            env: &[#(#env),*],
            server_url: #url,
            headers: &[#(#headers),*],
            timeout: #timeout,
        })
    });
    let (allow, deny) = (&mcp.allow, &mcp.deny);
    statics.push(quote! {
        static #sid: #rt::tools::McpSpec = #rt::tools::McpSpec {
            servers: &[#(#servers),*],
            allow: &[#(#allow),*],
            deny: &[#(#deny),*],
            tool_prompt: #tool_prompt,
        };
    });
    quote!(&#sid)
}
