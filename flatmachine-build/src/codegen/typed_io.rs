//! The typed path of a machine (docs/typed.md): `Input` and `Output` types from `data.input`
//! and `data.output`, the `TypedMachineDef` impl that `TypedMachine` runs with, and
//! `agents::AnyOutput`, which reads an agent state's output as its typed struct.

use super::OutputTypes;
use crate::ir::MachineIr;
use crate::model::{OutputFieldDef, OutputType};
use indexmap::IndexMap;
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};

/// The root machine's `TypedMachineDef` types when the user names their own
/// (`flatmachine!` arguments): paths, from inside the machine's module, to aliases that
/// [`user_types`] puts beside it.
#[derive(Debug, Default)]
pub(super) struct UserIo {
    /// `input = Type`.
    pub input: Option<TokenStream>,
    /// `output = Type`.
    pub output: Option<TokenStream>,
}

/// For the root machine `m` and the user's own types in `opts`: the items to put beside the
/// machine's module (an alias per type, written where the macro was called so that its path
/// resolves as the user wrote it, and a never-called function that compiles only when the
/// type has every field the machine reads or writes), and the paths to the aliases.
pub(super) fn user_types(m: &MachineIr, opts: &super::CodegenOptions) -> (TokenStream, UserIo) {
    let mut outside = Vec::new();
    let mut side = |ty: Option<&TokenStream>, which: &str, fields: Vec<String>| {
        let ty = ty?;
        let alias = format_ident!("__flatmachine_{}_{}", m.module, which);
        let check = format_ident!("__flatmachine_{}_{}_fields", m.module, which);
        let doc = format!(
            " The `{which}` type of machine `{}` (a `flatmachine!` argument).",
            m.name
        );
        // The field names take the span of the type, so rustc's "no field" error points at it.
        let span = ty
            .clone()
            .into_iter()
            .next()
            .map(|t| t.span())
            .unwrap_or_else(proc_macro2::Span::call_site);
        let var = Ident::new(which, span);
        let fields: Vec<Ident> = fields.iter().map(|f| Ident::new(f, span)).collect();
        let check_doc = format!(
            " Compile-time check: the `{which}` type has every field machine `{}` reads or writes (docs/typed.md).",
            m.name
        );
        outside.push(quote! {
            #[doc = #doc]
            #[allow(non_camel_case_types)]
            type #alias = #ty;

            #[doc = #check_doc]
            #[allow(dead_code, non_snake_case)]
            fn #check(#var: &#alias) {
                #(let _ = &#var.#fields;)*
            }
        });
        Some(quote!(super::#alias))
    };
    let input = side(opts.input_type.as_ref(), "input", input_fields(m));
    let output = side(opts.output_type.as_ref(), "output", output_keys(m));
    (quote!(#(#outside)*), UserIo { input, output })
}

/// `Input` / `Output` structs (when declared) and `impl TypedMachineDef for Machine`; an
/// undeclared side is `Value`, a side the user names is their type.
pub(super) fn io_items(
    m: &MachineIr,
    rt: &TokenStream,
    user: &UserIo,
    any_output: Option<&Ident>,
) -> TokenStream {
    let mut types = OutputTypes::new(rt);
    let input = io_type(
        &mut types,
        m,
        "Input",
        m.input.as_ref(),
        "What a run of this machine takes",
    );
    types.lenient_text = true;
    let output = io_type(
        &mut types,
        m,
        "Output",
        m.output.as_ref(),
        "What a run of this machine gives back",
    );
    let items = types.items;
    let agent_output = match any_output {
        Some(any) => quote! {
            type AgentOutput = agents::#any;

            fn agent_output(
                state: &str,
                output: &#rt::Value,
            ) -> ::core::option::Option<::core::result::Result<agents::#any, #rt::__private::serde_json::Error>> {
                agents::#any::of_state(state, output)
            }
        },
        None => quote! {
            type AgentOutput = #rt::Value;

            fn agent_output(
                _state: &str,
                _output: &#rt::Value,
            ) -> ::core::option::Option<::core::result::Result<#rt::Value, #rt::__private::serde_json::Error>> {
                None
            }
        },
    };
    let input = user.input.clone().unwrap_or(input);
    let output = user.output.clone().unwrap_or(output);
    quote! {
        #(#items)*

        impl #rt::typed::TypedMachineDef for Machine {
            type Input = #input;
            type Output = #output;
            #agent_output
        }
    }
}

/// The top-level fields of the machine input that the templates over it read (`context`,
/// `hooks.args`), skipping names that are not Rust identifiers.
fn input_fields(m: &MachineIr) -> Vec<String> {
    let mut strings = Vec::new();
    if let Some(c) = &m.context {
        collect(&c.0, &mut strings);
    }
    if let Some((_, Some(args))) = &m.hooks {
        collect(&args.0, &mut strings);
    }
    let mut fields: Vec<String> = strings
        .iter()
        .flat_map(|src| crate::templates::attribute_reads(src, "input"))
        .filter_map(|path| path.into_iter().next())
        .filter(|f| is_ident(f))
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

/// Every key some final state outputs (those that are Rust identifiers).
fn output_keys(m: &MachineIr) -> Vec<String> {
    let mut keys: Vec<String> = m
        .states
        .iter()
        .filter(|s| s.is_final)
        .filter_map(|s| s.output.as_ref())
        .filter_map(|o| o.0.as_object())
        .flat_map(|o| o.keys().cloned())
        .filter(|k| is_ident(k))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn is_ident(s: &str) -> bool {
    syn::parse_str::<Ident>(s).is_ok()
}

fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
        serde_json::Value::Object(map) => map.values().for_each(|i| collect(i, out)),
        _ => {}
    }
}

/// The struct for a declared side (pushed to `types`), else `Value`.
fn io_type(
    types: &mut OutputTypes<'_>,
    m: &MachineIr,
    name: &str,
    fields: Option<&IndexMap<String, OutputFieldDef>>,
    doc: &str,
) -> TokenStream {
    let rt = types.rt;
    match fields {
        Some(fields) => {
            let doc = format!(" {doc} (`data.{}` of `{}`).", name.to_lowercase(), m.source);
            let ident = types.strukt(name, name, &doc, fields);
            quote!(#ident)
        }
        None => quote!(#rt::Value),
    }
}

/// `AnyOutput`: one variant per agent with an `output` schema, and `AnyOutput::of_state`,
/// which reads the output of the agent a state calls. Nothing when no agent has a schema.
pub(super) fn any_output(
    m: &MachineIr,
    agents: &[(&str, Ident)],
    types: &mut OutputTypes<'_>,
) -> Option<Ident> {
    if agents.is_empty() {
        return None;
    }
    let rt = types.rt;
    let name = types.name("AnyOutput");
    let keys: Vec<&str> = agents.iter().map(|(k, _)| *k).collect();
    let variants: Vec<Ident> = crate::ir::variant_names(&keys)
        .into_iter()
        .map(|v| format_ident!("{}", v))
        .collect();
    let structs: Vec<&Ident> = agents.iter().map(|(_, s)| s).collect();
    let docs: Vec<String> = keys
        .iter()
        .map(|k| format!(" The output of agent `{k}`."))
        .collect();
    let arms: Vec<TokenStream> = agents
        .iter()
        .zip(&variants)
        .filter_map(|((key, _), variant)| {
            let states: Vec<&str> = m
                .states
                .iter()
                .filter(|s| s.def.agent.as_deref() == Some(*key))
                .map(|s| s.name.as_str())
                .collect();
            (!states.is_empty()).then(|| {
                quote! {
                    #(#states)|* => Some(#rt::__private::serde_json::from_value(output.clone()).map(Self::#variant)),
                }
            })
        })
        .collect();
    let of_state = if arms.is_empty() {
        quote!(None)
    } else {
        quote! {
            match state {
                #(#arms)*
                _ => None,
            }
        }
    };
    let unused = arms.is_empty().then(|| quote!(let _ = (state, output);));
    types.items.push(quote! {
        /// The typed output of one of this machine's agents with an `output` schema.
        #[derive(Debug, Clone, PartialEq)]
        pub enum #name {
            #(#[doc = #docs] #variants(#structs),)*
        }

        impl #name {
            /// The typed output of the agent that `state` calls, read from the state's output
            /// (what `MachineHooks::on_state_exit` receives); `None` when `state` calls no
            /// agent with an `output` schema.
            pub fn of_state(
                state: &str,
                output: &#rt::Value,
            ) -> ::core::option::Option<::core::result::Result<Self, #rt::__private::serde_json::Error>> {
                #unused
                #of_state
            }
        }
    });
    Some(name)
}

impl OutputTypes<'_> {
    /// The `deserialize_with` path for a plain `str` field of a machine's output, when
    /// reading such fields leniently.
    pub(super) fn lenient_text_reader(
        &self,
        def: &OutputFieldDef,
        optional: bool,
    ) -> Option<String> {
        let plain_text =
            def.kind == OutputType::Str && def.enum_values.as_ref().is_none_or(|e| e.is_empty());
        if !(self.lenient_text && plain_text) {
            return None;
        }
        let rt = self.rt.to_string().replace(' ', "");
        let reader = if optional { "optional_text" } else { "text" };
        Some(format!("{rt}::typed::lenient::{reader}"))
    }
}
