//! Lowered machines → Rust tokens: one module per machine holding its `State` enum, the embedded
//! templates, one small function per distinct condition and a static `MachineSpec` for the runtime.
//!
//! The generated code is kept lean (it is compiled in every build of the user's crate): what is
//! the same for every state lives in the runtime (`StateSpec::DEFAULT`, `StateSpec::next`, which
//! walks the transition table, `flatmachine_runtime::generated`), so a state costs its enum
//! variant, its name, the fields it sets and its conditions. `tests/generated_size.rs` holds a
//! 50-state chain to at most 40 lines per state.

use crate::ir::{Condition, MachineIr, StateIr, TemplateIr};
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};
use serde_json::Value;
use std::path::PathBuf;

mod typed_io;

/// Options for one code generation.
#[derive(Debug, Clone)]
pub struct CodegenOptions {
    /// Path of the runtime crate in generated code (default `::flatmachine_runtime`).
    pub runtime_path: TokenStream,
    /// Track every file read with `include_bytes!` so cargo rebuilds when one changes (the
    /// macro; build scripts print `cargo:rerun-if-changed` instead).
    pub track_files_read: bool,
    /// Files to track that way (filled in by [`compile`](crate::compile)).
    pub track_files: Vec<PathBuf>,
    /// Turn the compiler's warnings into real rustc warnings (`#[deprecated]` items), for the
    /// proc-macro, which has no warning API on stable Rust.
    pub warnings_as_deprecations: bool,
    /// Warning texts to surface that way (filled in by [`compile`](crate::compile)).
    pub warnings: Vec<String>,
    /// Names of the Rust tools the application registers on the builder
    /// (`flatmachine!("m.yml", tools = [..])`): checked against the YAML's tool lists.
    pub rust_tools: Vec<String>,
    /// The root machine's input as the user's own type (`flatmachine!("m.yml", input =
    /// my::Ticket)`): `TypedMachineDef::Input` instead of the generated `Input`, with a
    /// compile-time check that it has every field the templates read (docs/typed.md).
    pub input_type: Option<TokenStream>,
    /// The root machine's output as the user's own type (`output = my::Triaged`), checked to
    /// have every key a final state outputs.
    pub output_type: Option<TokenStream>,
}

impl Default for CodegenOptions {
    fn default() -> Self {
        Self {
            runtime_path: quote!(::flatmachine_runtime),
            track_files_read: false,
            track_files: Vec::new(),
            warnings_as_deprecations: false,
            warnings: Vec::new(),
            rust_tools: Vec::new(),
            input_type: None,
            output_type: None,
        }
    }
}

/// Generate the root machine's module, with every other machine under `children`.
pub fn generate(irs: &[MachineIr], opts: &CodegenOptions) -> TokenStream {
    let Some(root) = irs.first() else {
        return TokenStream::new();
    };
    let rt = &opts.runtime_path;
    let (user_types, user_io) = typed_io::user_types(root, opts);
    let root_items = machine_items(root, irs, rt, true, &user_io);
    let children: Vec<TokenStream> = irs[1..]
        .iter()
        .map(|m| {
            let name = format_ident!("{}", m.module);
            let items = machine_items(m, irs, rt, false, &typed_io::UserIo::default());
            let doc = format!(" Machine `{}` (from `{}`).", m.name, m.source);
            quote! {
                #[doc = #doc]
                pub mod #name {
                    #items
                }
            }
        })
        .collect();
    let children_mod = if children.is_empty() {
        quote!()
    } else {
        quote! {
            /// Every child machine this machine references, directly or through other children.
            pub mod children {
                #(#children)*
            }
        }
    };
    let tracking = tracking_items(&opts.track_files);
    let warnings: Vec<TokenStream> = opts
        .warnings
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let id = format_ident!("flatmachine_warning_{}", i);
            quote! {
                #[deprecated(note = #w)]
                #[allow(non_upper_case_globals)]
                const #id: () = ();
                const _: () = #id;
            }
        })
        .collect();
    let name = format_ident!("{}", root.module);
    let doc = format!(
        " Machine `{}` (from `{}`), compiled by flatmachine.",
        root.name, root.source
    );
    quote! {
        #user_types

        #[doc = #doc]
        #[allow(clippy::all, clippy::pedantic, unused_imports, dead_code)]
        pub mod #name {
            #(#tracking)*
            #(#warnings)*
            #root_items
            #children_mod
        }
    }
}

/// `const _: &[u8] = include_bytes!("…");` for each file, so cargo rebuilds when one changes.
pub fn tracking_items(files: &[PathBuf]) -> Vec<TokenStream> {
    files
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .map(|p| {
            let p = p.display().to_string();
            quote!(
                const _: &[u8] = include_bytes!(#p);
            )
        })
        .collect()
}

/// Path from machine `from` to machine module `to_module` (root at depth 0, children at depth 2).
fn spec_path(
    from: &MachineIr,
    to_module: &str,
    irs: &[MachineIr],
    from_is_root: bool,
) -> TokenStream {
    let root = &irs[0];
    let target = format_ident!("{}", to_module);
    if to_module == root.module {
        if from_is_root {
            quote!(self::SPEC)
        } else {
            quote!(super::super::SPEC)
        }
    } else if from_is_root {
        quote!(self::children::#target::SPEC)
    } else if to_module == from.module {
        quote!(self::SPEC)
    } else {
        quote!(super::#target::SPEC)
    }
}

fn machine_items(
    m: &MachineIr,
    irs: &[MachineIr],
    rt: &TokenStream,
    is_root: bool,
    user_io: &typed_io::UserIo,
) -> TokenStream {
    let mut slots = Slots::default();
    let n = m.states.len();
    let variants: Vec<Ident> = m
        .states
        .iter()
        .map(|s| format_ident!("{}", s.variant))
        .collect();
    let names: Vec<&str> = m.states.iter().map(|s| s.name.as_str()).collect();
    let variant_docs: Vec<String> = m
        .states
        .iter()
        .map(|s| {
            let mut d = format!(" `{}`", s.name);
            if s.index == m.initial {
                d.push_str(" (initial)");
            }
            if s.is_final {
                d.push_str(" (final)");
            }
            d
        })
        .collect();
    let n_lit = proc_macro2::Literal::usize_unsuffixed(n);
    let initial = &variants[m.initial];
    let initial_index = proc_macro2::Literal::usize_unsuffixed(m.initial);
    let finals: Vec<&Ident> = m
        .states
        .iter()
        .filter(|s| s.is_final)
        .map(|s| &variants[s.index])
        .collect();
    let is_final = if finals.is_empty() {
        quote!(false)
    } else {
        quote!(matches!(self, #(State::#finals)|*))
    };
    let name = &m.name;
    let source = &m.source;
    let spec_version = &m.spec_version;
    let config_hash = &m.config_hash;

    // Conditions: each simple one becomes a small function (one per distinct source), each CEL
    // one a `static CelProgram`; the transition table in `SPEC` refers to them and the runtime
    // walks it (`StateSpec::next`).
    let mut conditions = Conditions::default();
    let state_specs: Vec<TokenStream> = m
        .states
        .iter()
        .map(|s| state_spec(s, rt, &mut slots, &mut conditions))
        .collect();
    let condition_fns = &conditions.fns;
    let optional = |field: &str, value: Option<TokenStream>| {
        value.map(|v| {
            let field = format_ident!("{}", field);
            quote!(#field: Some(#v),)
        })
    };
    let context = optional(
        "context",
        m.context.as_ref().map(|t| template_value(&t.0, &mut slots)),
    );
    let max_steps = optional("max_steps", m.max_steps.map(|v| quote!(#v)));
    let max_concurrency = optional("max_concurrency", m.max_concurrency.map(|v| quote!(#v)));
    let heartbeat_interval = optional(
        "heartbeat_interval",
        m.heartbeat_interval.map(|v| quote!(#v)),
    );
    let job_lease_seconds = optional("job_lease_seconds", m.job_lease_seconds.map(|v| quote!(#v)));
    let persistence = optional(
        "persistence",
        m.persistence.as_ref().map(|p| {
            let enabled = p.enabled;
            let backend = &p.backend;
            let on = opt(p.checkpoint_on.as_ref().map(|v| quote!(&[#(#v),*])));
            quote!(#rt::machine::PersistenceSpec { enabled: #enabled, backend: #backend, checkpoint_on: #on })
        }),
    );
    let hooks = optional(
        "hooks",
        m.hooks.as_ref().map(|(class, args)| {
            let args = opt(args.as_ref().map(|t| template_value(&t.0, &mut slots)));
            quote!(#rt::machine::HooksSpec { class: #class, args: #args })
        }),
    );
    let backends = optional(
        "backends",
        m.backends.as_ref().map(|b| {
            let f = |v: &Option<String>| opt(v.as_ref().map(|s| quote!(#s)));
            let (p, l, r, g, w, s, q) = (
                f(&b.persistence),
                f(&b.locking),
                f(&b.results),
                f(&b.registration),
                f(&b.work),
                f(&b.signal),
                f(&b.sqlite_path),
            );
            quote!(#rt::machine::BackendsSpec {
                persistence: #p, locking: #l, results: #r, registration: #g, work: #w, signal: #s, sqlite_path: #q,
            })
        }),
    );
    let AgentItems {
        statics: agent_statics,
        specs: agents,
        outputs: agent_outputs,
        any_output,
    } = agent_items(m, rt);
    let agents = (!agents.is_empty()).then(|| quote!(agents: &[#(#agents),*],));
    let machines: Vec<TokenStream> = m
        .children
        .iter()
        .map(|(cname, module)| match module {
            Some(module) => {
                let p = spec_path(m, module, irs, is_root);
                quote!((#cname, Some(&#p)))
            }
            None => quote!((#cname, None)),
        })
        .collect();
    let machines = (!machines.is_empty()).then(|| quote!(machines: &[#(#machines),*],));
    let actions: Vec<&String> = m.actions.iter().collect();
    let actions = (!actions.is_empty()).then(|| quote!(actions: &[#(#actions),*],));
    let cel = (m.engine == crate::model::ExpressionEngine::Cel).then(|| quote!(cel: true,));
    let rust_tools = &m.rust_tools;
    let rust_tools = (!rust_tools.is_empty()).then(|| quote!(rust_tools: &[#(#rust_tools),*],));
    let slot_statics = slots.statics(rt);
    let typed_actions = actions_items(m, irs, rt);
    let typed_io = typed_io::io_items(m, rt, user_io, any_output.as_ref());

    quote! {
        use #rt::expr;
        use #rt::machine::{MachineSpec, StateSpec, TransitionSpec};
        use #rt::template::{TemplateSlot, TemplateValue};

        /// The machine's name (`data.name`).
        pub const NAME: &str = #name;

        /// The states of this machine, in file order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum State {
            #(#[doc = #variant_docs] #variants,)*
        }

        /// The states' names in the YAML, in file order.
        const NAMES: [&str; #n_lit] = [#(#names),*];

        impl State {
            /// Every state, in file order.
            pub const ALL: [State; #n_lit] = [#(State::#variants),*];
            /// The state a run starts in.
            pub const INITIAL: State = State::#initial;
            /// The states a run ends in.
            pub const FINAL: &'static [State] = &[#(State::#finals),*];

            /// The state's name in the YAML.
            pub const fn name(self) -> &'static str {
                NAMES[self as usize]
            }

            /// Position in the file (and in `MachineSpec::states`).
            pub const fn index(self) -> usize {
                self as usize
            }

            /// The state at a position.
            pub const fn from_index(index: usize) -> Option<State> {
                if index < #n_lit { Some(State::ALL[index]) } else { None }
            }

            /// Whether runs end here.
            pub const fn is_final(self) -> bool {
                #is_final
            }
        }

        impl ::core::fmt::Display for State {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::core::str::FromStr for State {
            type Err = #rt::machine::UnknownState;

            fn from_str(name: &str) -> ::core::result::Result<Self, Self::Err> {
                #rt::generated::state_index(&NAMES, name, NAME).map(|i| State::ALL[i])
            }
        }

        /// The next state after `state`: the first transition whose condition holds, or `None`
        /// when none does (or the state is final).
        pub fn transition(state: State, context: &#rt::Context) -> expr::Result<Option<State>> {
            Ok(transition_by_index(state.index(), context)?.and_then(State::from_index))
        }

        fn transition_by_index(index: usize, context: &#rt::Context) -> expr::Result<Option<usize>> {
            #rt::generated::transition(SPEC.states, index, context)
        }

        #(#condition_fns)*

        #slot_statics

        #(#agent_statics)*

        /// The machine's static description, executed by the runtime.
        pub static SPEC: MachineSpec = MachineSpec {
            name: NAME,
            spec_version: #spec_version,
            source: #source,
            config_hash: #config_hash,
            states: &[#(#state_specs),*],
            initial: #initial_index,
            #context
            #max_steps
            #max_concurrency
            #heartbeat_interval
            #job_lease_seconds
            #persistence
            #hooks
            #backends
            #agents
            #machines
            #actions
            #cel
            #rust_tools
            transition: transition_by_index,
            ..MachineSpec::DEFAULT
        };

        /// Marker type for this machine.
        #[derive(Debug, Clone, Copy, Default)]
        pub struct Machine;

        impl #rt::machine::MachineDef for Machine {
            type State = State;

            fn spec() -> &'static MachineSpec {
                &SPEC
            }

            fn state_at(index: usize) -> Option<State> {
                State::from_index(index)
            }
        }

        #typed_actions

        #typed_io

        #agent_outputs
    }
}

/// The compiled conditions of one machine: a function per distinct simple-language condition,
/// CEL programs as template-like statics.
#[derive(Default)]
struct Conditions {
    fns: Vec<TokenStream>,
    /// Source → function name.
    index: std::collections::HashMap<String, Ident>,
}

impl Conditions {
    /// The `TransitionSpec` for one transition.
    fn transition(&mut self, t: &crate::ir::TransitionIr, slots: &mut Slots) -> TokenStream {
        let to = proc_macro2::Literal::usize_unsuffixed(t.to);
        match &t.condition {
            None => quote!(TransitionSpec::always(#to)),
            Some((src, Some(Condition::Cel(cel)))) => {
                let slot = slots.cel_slot(src, cel.fields.as_deref());
                quote!(TransitionSpec::cel(#src, &#slot, #to))
            }
            Some((src, cond)) => {
                let f = self.function(src, cond.as_ref());
                quote!(TransitionSpec::when(#src, #f, #to))
            }
        }
    }

    /// The function evaluating a simple-language condition.
    fn function(&mut self, src: &str, cond: Option<&Condition>) -> Ident {
        if let Some(f) = self.index.get(src) {
            return f.clone();
        }
        let f = format_ident!("cond_{}", self.fns.len());
        let ctx = format_ident!("context");
        let (body, uses_ctx) = match cond {
            Some(Condition::Simple(expr)) => {
                crate::expr::condition_fn_body(expr, &quote!(expr), &ctx)
            }
            // Not reached: a condition with an error stops the build before codegen.
            _ => {
                let message = format!("invalid condition `{src}`");
                (quote!(Err(expr::ExprError::new(#message))), false)
            }
        };
        let param = if uses_ctx { quote!(#ctx) } else { quote!(_) };
        let doc = format!(" `{src}`");
        self.fns.push(quote! {
            #[doc = #doc]
            fn #f(#param: &expr::Context) -> expr::Result<bool> {
                #body
            }
        });
        self.index.insert(src.to_string(), f.clone());
        f
    }
}

/// The typed route for `action:` handlers: an `Actions` trait with one async method per action a
/// run of `m` can reach — its own and its child machines' (children run with their parent's
/// handlers) — and `Machine::with_actions`, which registers every method. Nothing when there are
/// no actions.
fn actions_items(m: &MachineIr, irs: &[MachineIr], rt: &TokenStream) -> TokenStream {
    // Action name → the states that run it, over `m` and every machine reachable from it, in
    // first-use order (file order, then children breadth-first).
    let mut uses: Vec<(&str, Vec<String>)> = Vec::new();
    let mut tree = vec![m];
    let mut i = 0;
    while let Some(&mi) = tree.get(i) {
        i += 1;
        for s in &mi.states {
            if let Some(a) = &s.def.action {
                let at = if std::ptr::eq(mi, m) {
                    format!("`{}`", s.name)
                } else {
                    format!("`{}` of machine `{}`", s.name, mi.name)
                };
                match uses.iter_mut().find(|(name, _)| name == a) {
                    Some((_, ats)) => ats.push(at),
                    None => uses.push((a, vec![at])),
                }
            }
        }
        for module in mi
            .children
            .iter()
            .filter_map(|(_, module)| module.as_deref())
        {
            if let Some(child) = irs.iter().find(|c| c.module == module)
                && !tree.iter().any(|t| std::ptr::eq(*t, child))
            {
                tree.push(child);
            }
        }
    }
    if uses.is_empty() {
        return TokenStream::new();
    }
    // An action already spelt as a snake_case identifier keeps it; the others take theirs, with a
    // numeric suffix when it is taken.
    let mut used: std::collections::HashSet<String> = uses
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| crate::ir::snake_ident(name) == *name)
        .map(str::to_string)
        .collect();
    let (mut names, mut methods, mut docs) = (Vec::new(), Vec::new(), Vec::new());
    for (name, at) in &uses {
        let base = crate::ir::snake_ident(name);
        let mut ident = base.clone();
        if base != *name {
            let mut n = 2;
            while !used.insert(ident.clone()) {
                ident = format!("{base}_{n}");
                n += 1;
            }
        }
        let states = if at.len() == 1 { "state" } else { "states" };
        docs.push(format!(" `action: {name}` ({states} {}).", at.join(", ")));
        names.push(*name);
        methods.push(format_ident!("{}", ident));
    }
    quote! {
        /// One method per `action:` in the machine (and in its child machines, which run with
        /// this machine's handlers); implement it to handle every action with a compile-time
        /// check, then start with [`Machine::with_actions`]. A method changes the context in
        /// place; its changes stay also when it returns an error (then `on_error` routes).
        /// `ActionCall::current()` tells which machine, state and execution called it.
        pub trait Actions: Send + Sync + 'static {
            #(
                #[doc = #docs]
                fn #methods(&self, context: &mut #rt::Context) -> impl ::core::future::Future<Output = ::core::result::Result<(), #rt::StateError>> + Send;
            )*
        }

        impl Machine {
            /// Start configuring this machine with typed action handlers: each method of
            /// `actions` is registered with `MachineBuilder::action_mut` under its action name.
            pub fn with_actions<A: Actions>(actions: A) -> #rt::MachineBuilder {
                let actions = ::std::sync::Arc::new(actions);
                #rt::Machine::of::<Machine>()
                    #(
                        .action_mut(#names, {
                            let actions = ::std::sync::Arc::clone(&actions);
                            move |context: &mut #rt::Context, _call: &#rt::ActionCall| {
                                let actions = ::std::sync::Arc::clone(&actions);
                                ::std::boxed::Box::pin(async move { <A as Actions>::#methods(&*actions, context).await })
                            }
                        })
                    )*
            }
        }
    }
}

/// The statics of flatagent number `i` (key `key` in `agents:`): its prompts, metadata, raw
/// model config and the `static AGENT_<i>: AgentConfig` itself, whose name is returned.
fn flat_agent_statics(
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
struct AgentItems {
    /// `static AGENT_n: AgentConfig` and the statics it refers to.
    statics: Vec<TokenStream>,
    /// One `AgentSpec` per entry of `agents:`.
    specs: Vec<TokenStream>,
    /// `pub mod agents` with a typed struct per structured output (empty when there is none).
    outputs: TokenStream,
    /// The name of `agents::AnyOutput`, when an agent has an `output` schema.
    any_output: Option<Ident>,
}

fn f64_lit(v: f64) -> TokenStream {
    let lit = proc_macro2::Literal::f64_suffixed(v);
    quote!(#lit)
}

fn agent_items(m: &MachineIr, rt: &TokenStream) -> AgentItems {
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

fn output_kind(t: crate::model::OutputType) -> Ident {
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
fn output_field(name: &str, d: &crate::model::OutputFieldDef, rt: &TokenStream) -> TokenStream {
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
fn inline_tools(
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
fn mcp_spec(
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

/// Serde types for the agents' structured outputs, in a `pub mod agents`.
struct OutputTypes<'a> {
    rt: &'a TokenStream,
    used: std::collections::HashSet<String>,
    items: Vec<TokenStream>,
    /// Read `str` fields also from numbers and booleans (a machine's rendered output: a
    /// template whose text is JSON, such as `42`, renders to a number).
    lenient_text: bool,
}

impl<'a> OutputTypes<'a> {
    fn new(rt: &'a TokenStream) -> Self {
        Self {
            rt,
            used: std::collections::HashSet::new(),
            items: Vec::new(),
            lenient_text: false,
        }
    }

    /// A type name from `parts` (UpperCamelCase, sanitised), unique in the module.
    fn name(&mut self, base: &str) -> Ident {
        let base = crate::ir::variant_names(&[base]).remove(0);
        let mut name = base.clone();
        let mut n = 2;
        while !self.used.insert(name.clone()) {
            name = format!("{base}{n}");
            n += 1;
        }
        format_ident!("{}", name)
    }

    fn serde_attrs(&self) -> TokenStream {
        let rt = self.rt;
        let krate = format!("{}::__private::serde", rt.to_string().replace(' ', ""));
        quote! {
            #[derive(Debug, Clone, PartialEq, #rt::__private::serde::Serialize, #rt::__private::serde::Deserialize)]
            #[serde(crate = #krate)]
        }
    }

    fn agent(
        &mut self,
        key: &str,
        source: &str,
        config: &Ident,
        fields: &indexmap::IndexMap<String, crate::model::OutputFieldDef>,
    ) -> Ident {
        let rt = self.rt;
        let base = crate::ir::variant_names(&[key]).remove(0);
        let doc = format!(" The structured output of agent `{key}` (from `{source}`).");
        let name = self.strukt(&format!("{base}Output"), &base, &doc, fields);
        self.items.push(quote! {
            impl #name {
                /// The name of the agent in the machine's `agents:`.
                pub const AGENT: &'static str = #key;

                /// The compiled agent this type is the output of.
                pub fn config() -> &'static #rt::agents::AgentConfig {
                    &super::#config
                }
            }
        });
        name
    }

    /// A struct for an object's fields; nested types are named `<prefix><Field>`.
    fn strukt(
        &mut self,
        type_name: &str,
        prefix: &str,
        doc: &str,
        fields: &indexmap::IndexMap<String, crate::model::OutputFieldDef>,
    ) -> Ident {
        let rt = self.rt;
        let name = self.name(type_name);
        let mut used = std::collections::HashSet::new();
        let mut members = Vec::new();
        for (field, def) in fields {
            let base = crate::ir::snake_ident(field);
            let mut ident = base.clone();
            let mut n = 2;
            while !used.insert(ident.clone()) {
                ident = format!("{base}_{n}");
                n += 1;
            }
            let camel = crate::ir::variant_names(&[field]).remove(0);
            let ty = self.ty(&format!("{prefix}{camel}"), def);
            let ident = format_ident!("{}", ident);
            let rename = (ident != field.as_str()).then(|| quote!(#[serde(rename = #field)]));
            let docs = def.description.iter().map(|d| format!(" {d}"));
            let optional = def.required == Some(false);
            let (ty, default) = if optional {
                (
                    quote!(::core::option::Option<#ty>),
                    quote!(#[serde(default, skip_serializing_if = "Option::is_none")]),
                )
            } else {
                (ty, quote!())
            };
            let default = match self.lenient_text_reader(def, optional) {
                Some(reader) => quote!(#default #[serde(deserialize_with = #reader)]),
                None => default,
            };
            members.push(quote! {
                #(#[doc = #docs])*
                #rename
                #default
                pub #ident: #ty,
            });
        }
        let attrs = self.serde_attrs();
        let _ = rt;
        self.items.push(quote! {
            #[doc = #doc]
            #attrs
            pub struct #name {
                #(#members)*
            }
        });
        name
    }

    fn ty(&mut self, type_name: &str, d: &crate::model::OutputFieldDef) -> TokenStream {
        use crate::model::OutputType as T;
        let rt = self.rt;
        let value = quote!(#rt::__private::serde_json::Value);
        match d.kind {
            T::Str => match d.enum_values.as_ref().filter(|e| !e.is_empty()) {
                Some(values) => {
                    let mut values: Vec<&str> = values.iter().map(String::as_str).collect();
                    let mut seen = std::collections::HashSet::new();
                    values.retain(|v| seen.insert(*v));
                    let name = self.name(type_name);
                    let variants: Vec<Ident> = crate::ir::variant_names(&values)
                        .into_iter()
                        .map(|v| format_ident!("{}", v))
                        .collect();
                    let doc = format!(" Allowed values: {}.", values.join(", "));
                    let krate = format!("{}::__private::serde", rt.to_string().replace(' ', ""));
                    self.items.push(quote! {
                        #[doc = #doc]
                        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, #rt::__private::serde::Serialize, #rt::__private::serde::Deserialize)]
                        #[serde(crate = #krate)]
                        pub enum #name {
                            #(#[serde(rename = #values)] #variants,)*
                        }
                    });
                    quote!(#name)
                }
                None => quote!(::std::string::String),
            },
            T::Int => quote!(i64),
            T::Float => quote!(f64),
            T::Bool => quote!(bool),
            T::Json => value,
            T::List => match &d.items {
                Some(items) => {
                    let inner = self.ty(&format!("{type_name}Item"), items);
                    quote!(::std::vec::Vec<#inner>)
                }
                None => quote!(::std::vec::Vec<#value>),
            },
            T::Object => match d.properties.as_ref().filter(|p| !p.is_empty()) {
                Some(props) => {
                    let doc = match &d.description {
                        Some(desc) => format!(" {desc}"),
                        None => format!(" `{type_name}` of a structured output."),
                    };
                    let name = self.strukt(type_name, type_name, &doc, props);
                    quote!(#name)
                }
                None => quote!(#rt::__private::serde_json::Map<::std::string::String, #value>),
            },
        }
    }

    fn finish(self) -> TokenStream {
        if self.items.is_empty() {
            return TokenStream::new();
        }
        let items = self.items;
        quote! {
            /// Typed structured outputs of this machine's flatagents (one struct per agent with an
            /// `output` schema), to deserialize an agent's output with `serde_json::from_value`.
            pub mod agents {
                #(#items)*
            }
        }
    }
}

fn opt(t: Option<TokenStream>) -> TokenStream {
    match t {
        Some(t) => quote!(Some(#t)),
        None => quote!(None),
    }
}

/// Template strings become named statics (`T0`, `T1`, ...) holding a lazily parsed slot.
#[derive(Default)]
struct Slots {
    sources: Vec<String>,
    /// CEL conditions: source and the top-level context fields read (`None`: any).
    cel: Vec<(String, Option<Vec<String>>)>,
    /// Index of each source in `sources` (a linear search was quadratic in big contexts).
    index: std::collections::HashMap<String, usize>,
}

impl Slots {
    fn slot(&mut self, src: &str) -> Ident {
        let i = match self.index.get(src) {
            Some(&i) => i,
            None => {
                self.sources.push(src.to_string());
                self.index.insert(src.to_string(), self.sources.len() - 1);
                self.sources.len() - 1
            }
        };
        format_ident!("T{}", i)
    }

    /// The `static` holding this CEL condition (one per distinct condition).
    fn cel_slot(&mut self, src: &str, fields: Option<&[String]>) -> Ident {
        let entry = (src.to_string(), fields.map(<[String]>::to_vec));
        let i = match self.cel.iter().position(|c| *c == entry) {
            Some(i) => i,
            None => {
                self.cel.push(entry);
                self.cel.len() - 1
            }
        };
        format_ident!("C{}", i)
    }

    fn statics(&self, rt: &TokenStream) -> TokenStream {
        let items = self.sources.iter().enumerate().map(|(i, src)| {
            let id = format_ident!("T{}", i);
            quote!(static #id: TemplateSlot = TemplateSlot::new(#src);)
        });
        let cel = self.cel.iter().enumerate().map(|(i, (src, fields))| {
            let id = format_ident!("C{}", i);
            let fields = match fields {
                Some(f) => quote!(Some(&[#(#f),*])),
                None => quote!(None),
            };
            quote!(static #id: #rt::cel::CelProgram = #rt::cel::CelProgram::new(#src, #fields);)
        });
        quote!(#(#items)* #(#cel)*)
    }
}

/// A `TemplateValue` tree (generated modules import `TemplateValue`).
fn template_value(v: &Value, slots: &mut Slots) -> TokenStream {
    match v {
        Value::Null => quote!(TemplateValue::Null),
        Value::Bool(b) => quote!(TemplateValue::Bool(#b)),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => quote!(TemplateValue::Int(#i)),
            (None, Some(f)) => {
                let lit = proc_macro2::Literal::f64_suffixed(f);
                quote!(TemplateValue::Float(#lit))
            }
            _ => quote!(TemplateValue::Null),
        },
        Value::String(s) => {
            let id = slots.slot(s);
            quote!(TemplateValue::Str(&#id))
        }
        Value::Array(items) => {
            let items: Vec<TokenStream> = items.iter().map(|i| template_value(i, slots)).collect();
            quote!(TemplateValue::List(&[#(#items),*]))
        }
        Value::Object(map) => {
            let entries: Vec<TokenStream> = map
                .iter()
                .map(|(k, v)| {
                    let v = template_value(v, slots);
                    quote!((#k, #v))
                })
                .collect();
            quote!(TemplateValue::Map(&[#(#entries),*]))
        }
    }
}

/// One `StateSpec` literal: the fields that differ from `StateSpec::DEFAULT`, then
/// `..StateSpec::DEFAULT`.
fn state_spec(
    s: &StateIr,
    rt: &TokenStream,
    slots: &mut Slots,
    conditions: &mut Conditions,
) -> TokenStream {
    let d = &s.def;
    let name = &s.name;
    // Templates are numbered in this order (child inputs, foreach, key, launch_input, input,
    // output_to_context, output); the fields are listed in the struct's order.
    let calls = match &d.machine {
        None => None,
        Some(crate::model::MachineField::One(n)) => {
            Some(quote!(machine: &[#rt::machine::ChildCall { name: #n, input: None }],))
        }
        Some(crate::model::MachineField::Many(items)) => {
            let calls: Vec<TokenStream> = items
                .iter()
                .map(|i| {
                    let n = i.name();
                    let input = match i {
                        crate::model::MachineListItem::WithInput(mi) => opt(mi
                            .input
                            .as_ref()
                            .map(|inp| template_value(&Value::Object(inp.clone()), slots))),
                        crate::model::MachineListItem::Name(_) => quote!(None),
                    };
                    quote!(#rt::machine::ChildCall { name: #n, input: #input })
                })
                .collect();
            Some(quote!(machine: &[#(#calls),*], machine_list: true,))
        }
    };
    let mut template = |field: &str, t: Option<&TemplateIr>| {
        t.map(|t| {
            let field = format_ident!("{}", field);
            let v = template_value(&t.0, slots);
            quote!(#field: Some(#v),)
        })
    };
    let foreach = template("foreach", s.foreach.as_ref());
    let key = template("key", s.key.as_ref());
    let launch_input = template("launch_input", s.launch_input.as_ref());
    let input = template("input", s.input.as_ref());
    let output_to_context = template("output_to_context", s.output_to_context.as_ref());
    let output = template("output", s.output.as_ref());
    let wait_for = template("wait_for", s.wait_for.as_ref());

    let mut fields: Vec<TokenStream> = vec![quote!(name: #name,)];
    if s.is_final {
        fields.push(quote!(is_final: true,));
    }
    if let Some(a) = &d.action {
        fields.push(quote!(action: Some(#a),));
    }
    if let Some(a) = &d.agent {
        fields.push(quote!(agent: Some(#a),));
    }
    fields.extend(calls);
    fields.extend(foreach);
    if let Some(a) = d.as_.as_deref().filter(|a| *a != "item") {
        fields.push(quote!(foreach_as: #a,));
    }
    fields.extend(key);
    if d.mode == Some(crate::model::Mode::Any) {
        fields.push(quote!(mode_any: true,));
    }
    if let Some(t) = d.timeout {
        let lit = proc_macro2::Literal::f64_suffixed(t);
        fields.push(quote!(timeout: Some(#lit),));
    }
    let launch: Vec<&str> = d.launch.as_ref().map(|l| l.names()).unwrap_or_default();
    if !launch.is_empty() {
        fields.push(quote!(launch: &[#(#launch),*],));
    }
    fields.extend(
        [launch_input, input, output_to_context, output, wait_for]
            .into_iter()
            .flatten(),
    );
    if !s.on_error.is_empty() {
        let on_error = s.on_error.iter().map(|(t, i)| {
            let i = proc_macro2::Literal::usize_unsuffixed(*i);
            quote!((#t, #i))
        });
        fields.push(quote!(on_error: &[#(#on_error),*],));
    }
    if let Some(e) = &d.execution {
        let kind = e.kind.as_str();
        let backoffs = opt(e.backoffs.as_ref().map(|b| {
            let b: Vec<proc_macro2::Literal> = b
                .iter()
                .map(|b| proc_macro2::Literal::f64_suffixed(*b))
                .collect();
            quote!(&[#(#b),*])
        }));
        let jitter = opt(e.jitter.map(f64_lit));
        let n_samples = opt(e.n_samples.map(|v| quote!(#v)));
        let k_margin = opt(e.k_margin.map(|v| quote!(#v)));
        let max_candidates = opt(e.max_candidates.map(|v| quote!(#v)));
        let retry_on_empty = e.retry_on_empty.unwrap_or(false);
        let max_response_tokens = opt(e.max_response_tokens.map(|v| quote!(#v)));
        fields.push(quote!(execution: Some(#rt::machine::ExecutionSpec { kind: #kind, backoffs: #backoffs, jitter: #jitter, n_samples: #n_samples, k_margin: #k_margin, max_candidates: #max_candidates, retry_on_empty: #retry_on_empty, max_response_tokens: #max_response_tokens }),));
    }
    if let Some(tl) = &s.tool_loop {
        let mut limit = |field: &str| {
            opt(tl
                .limits
                .iter()
                .find(|(f, _)| *f == field)
                .map(|(_, t)| template_value(&t.0, slots)))
        };
        let (max_turns, max_tool_calls, max_cost, tool_timeout, total_timeout) = (
            limit("max_turns"),
            limit("max_tool_calls"),
            limit("max_cost"),
            limit("tool_timeout"),
            limit("total_timeout"),
        );
        let (allowed, denied) = (&tl.allowed, &tl.denied);
        fields.push(quote!(tool_loop: Some(#rt::machine::ToolLoopSpec {
            max_turns: #max_turns,
            max_tool_calls: #max_tool_calls,
            max_cost: #max_cost,
            tool_timeout: #tool_timeout,
            total_timeout: #total_timeout,
            allowed_tools: &[#(#allowed),*],
            denied_tools: &[#(#denied),*],
        }),));
    }
    if !s.transitions.is_empty() {
        let transitions = s
            .transitions
            .iter()
            .map(|t| conditions.transition(t, slots));
        fields.push(quote!(transitions: &[#(#transitions),*],));
    }
    quote! {
        StateSpec {
            #(#fields)*
            ..StateSpec::DEFAULT
        }
    }
}

/// Pretty-print generated tokens (prettyplease), with an `@generated` header.
pub fn pretty(tokens: &TokenStream) -> String {
    let body = match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(_) => tokens.to_string(),
    };
    format!("// @generated by flatmachine-build. Do not edit.\n\n{body}")
}
