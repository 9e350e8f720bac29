//! One state's static `StateSpec`, and the template slots its values refer to.

use super::*;

pub(super) fn opt(t: Option<TokenStream>) -> TokenStream {
    match t {
        Some(t) => quote!(Some(#t)),
        None => quote!(None),
    }
}

/// Template strings become named statics (`T0`, `T1`, ...) holding a lazily parsed slot.
#[derive(Default)]
pub(super) struct Slots {
    pub(super) sources: Vec<String>,
    /// CEL conditions: source and the top-level context fields read (`None`: any).
    pub(super) cel: Vec<(String, Option<Vec<String>>)>,
    /// Index of each source in `sources` (a linear search was quadratic in big contexts).
    pub(super) index: std::collections::HashMap<String, usize>,
}

impl Slots {
    pub(super) fn slot(&mut self, src: &str) -> Ident {
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
    pub(super) fn cel_slot(&mut self, src: &str, fields: Option<&[String]>) -> Ident {
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

    pub(super) fn statics(&self, rt: &TokenStream) -> TokenStream {
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
pub(super) fn template_value(v: &Value, slots: &mut Slots) -> TokenStream {
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
pub(super) fn state_spec(
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
