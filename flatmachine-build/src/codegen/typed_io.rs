//! The typed path of a machine (docs/typed.md): `Input` and `Output` types from `data.input`
//! and `data.output`, the `TypedMachineDef` impl that `TypedMachine` runs with, and
//! `agents::AnyOutput`, which reads an agent state's output as its typed struct.

use super::OutputTypes;
use crate::ir::MachineIr;
use crate::model::{OutputFieldDef, OutputType};
use indexmap::IndexMap;
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};

/// `Input` / `Output` structs (when declared) and `impl TypedMachineDef for Machine`; an
/// undeclared side is `Value`.
pub(super) fn io_items(m: &MachineIr, rt: &TokenStream) -> TokenStream {
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
    quote! {
        #(#items)*

        impl #rt::typed::TypedMachineDef for Machine {
            type Input = #input;
            type Output = #output;
        }
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
pub(super) fn any_output(m: &MachineIr, agents: &[(&str, Ident)], types: &mut OutputTypes<'_>) {
    if agents.is_empty() {
        return;
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
}

impl OutputTypes<'_> {
    /// The `deserialize_with` path for a plain `str` field of a machine's output, when
    /// reading such fields leniently.
    pub(super) fn lenient_text_reader(&self, def: &OutputFieldDef, optional: bool) -> Option<String> {
        let plain_text = def.kind == OutputType::Str
            && def.enum_values.as_ref().is_none_or(|e| e.is_empty());
        if !(self.lenient_text && plain_text) {
            return None;
        }
        let rt = self.rt.to_string().replace(' ', "");
        let reader = if optional { "optional_text" } else { "text" };
        Some(format!("{rt}::typed::lenient::{reader}"))
    }
}
