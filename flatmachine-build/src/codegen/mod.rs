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

mod agents;
mod output_types;
mod states;
mod typed_io;

pub use agents::generate_agent;
use agents::*;
use output_types::*;
use states::*;

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

/// Pretty-print generated tokens (prettyplease), with an `@generated` header.
pub fn pretty(tokens: &TokenStream) -> String {
    let body = match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(_) => tokens.to_string(),
    };
    format!("// @generated by flatmachine-build. Do not edit.\n\n{body}")
}
