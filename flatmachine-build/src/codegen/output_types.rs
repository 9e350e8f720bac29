//! Typed agent outputs: Rust structs generated from an agent's `output` schema.

use super::*;

/// Serde types for the agents' structured outputs, in a `pub mod agents`.
pub(super) struct OutputTypes<'a> {
    pub(super) rt: &'a TokenStream,
    pub(super) used: std::collections::HashSet<String>,
    pub(super) items: Vec<TokenStream>,
    /// Read `str` fields also from numbers and booleans (a machine's rendered output: a
    /// template whose text is JSON, such as `42`, renders to a number).
    pub(super) lenient_text: bool,
}

impl<'a> OutputTypes<'a> {
    pub(super) fn new(rt: &'a TokenStream) -> Self {
        Self {
            rt,
            used: std::collections::HashSet::new(),
            items: Vec::new(),
            lenient_text: false,
        }
    }

    /// A type name from `parts` (UpperCamelCase, sanitised), unique in the module.
    pub(super) fn name(&mut self, base: &str) -> Ident {
        let base = crate::ir::variant_names(&[base]).remove(0);
        let mut name = base.clone();
        let mut n = 2;
        while !self.used.insert(name.clone()) {
            name = format!("{base}{n}");
            n += 1;
        }
        format_ident!("{}", name)
    }

    pub(super) fn serde_attrs(&self) -> TokenStream {
        let rt = self.rt;
        let krate = format!("{}::__private::serde", rt.to_string().replace(' ', ""));
        quote! {
            #[derive(Debug, Clone, PartialEq, #rt::__private::serde::Serialize, #rt::__private::serde::Deserialize)]
            #[serde(crate = #krate)]
        }
    }

    pub(super) fn agent(
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
    pub(super) fn strukt(
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

    pub(super) fn ty(&mut self, type_name: &str, d: &crate::model::OutputFieldDef) -> TokenStream {
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

    pub(super) fn finish(self) -> TokenStream {
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
