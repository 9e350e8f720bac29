//! `flatmachine!("machine.yml")`: compiles a FlatMachine YAML file into a Rust module at build
//! time. A thin shim over `flatmachine-build`, which does all the work.

use proc_macro::TokenStream;
use quote::quote;
use std::path::{Path, PathBuf};
use syn::{LitStr, parse_macro_input};

/// Compile a machine YAML file into a Rust module named after the machine.
///
/// The path is relative to `CARGO_MANIFEST_DIR`. Errors in the YAML become compile errors that
/// name `file:line:col`; warnings become compiler warnings (`flatmachine!("m.yml",
/// allow_warnings)` silences them for that machine). The crate rebuilds when the YAML or any
/// file it references changes.
///
/// `flatmachine!("m.yml", input = my::Ticket, output = my::Triaged)` names your own serde types
/// as the machine's `TypedMachineDef::Input` / `Output` (typed runs, docs/typed.md); they must
/// have every `input.<field>` the templates read and every key a final state outputs.
///
/// `tools = [name, ..]` declares the Rust tools the application registers on the builder
/// (`MachineBuilder::tool`), so the compiler can check `tool_loop` states and their
/// `allowed_tools` / `denied_tools` against them: `flatmachine!("m.yml", tools = [word_count,
/// "read-notes"])` (identifiers or string literals).
#[proc_macro]
pub fn flatmachine(input: TokenStream) -> TokenStream {
    let args = parse_macro_input!(input as Args);
    expand(&args).into()
}

/// Compile a flatagent YAML file (`spec: flatagent`, with the `profiles.yml` beside it) into a
/// Rust module named after the agent: `CONFIG`, the typed `Output` of its `output` schema (the
/// reply text without one) and `Agent`, callable on any LLM backend:
///
/// ```ignore
/// flatagent!("agents/critic.yml");
/// let critic = critic::Agent::new(backend);
/// let review: critic::Output = critic.call(&json!({"tagline": "…"})).await?;
/// ```
///
/// The path is relative to `CARGO_MANIFEST_DIR`; YAML mistakes are compile errors naming
/// `file:line:col`, as with `flatmachine!`.
#[proc_macro]
pub fn flatagent(input: TokenStream) -> TokenStream {
    let lit = parse_macro_input!(input as LitStr);
    expand_agent(&lit).into()
}

/// `"path.yml"`, then optionally, comma-separated: `allow_warnings`, `input = Type`,
/// `output = Type` (the user's own types for typed runs, docs/typed.md), `tools = [..]` (the
/// Rust tools registered on the builder).
struct Args {
    path: LitStr,
    allow_warnings: bool,
    input: Option<syn::Type>,
    output: Option<syn::Type>,
    tools: Option<Vec<String>>,
}

impl syn::parse::Parse for Args {
    fn parse(input: syn::parse::ParseStream<'_>) -> syn::Result<Self> {
        let path: LitStr = input.parse()?;
        let mut args = Args {
            path,
            allow_warnings: false,
            input: None,
            output: None,
            tools: None,
        };
        while input.parse::<Option<syn::Token![,]>>()?.is_some() && !input.is_empty() {
            let flag: syn::Ident = input.parse()?;
            let slot = match flag.to_string().as_str() {
                "allow_warnings" => {
                    args.allow_warnings = true;
                    continue;
                }
                "input" => &mut args.input,
                "output" => &mut args.output,
                "tools" => {
                    if args.tools.is_some() {
                        return Err(syn::Error::new(flag.span(), "`tools` is given twice"));
                    }
                    input.parse::<syn::Token![=]>()?;
                    args.tools = Some(parse_tool_names(input)?);
                    continue;
                }
                _ => {
                    return Err(syn::Error::new(
                        flag.span(),
                        "expected `allow_warnings`, `input = Type`, `output = Type` or `tools = [..]`",
                    ));
                }
            };
            if slot.is_some() {
                return Err(syn::Error::new(
                    flag.span(),
                    format!("`{flag}` is given twice"),
                ));
            }
            input.parse::<syn::Token![=]>()?;
            *slot = Some(input.parse()?);
        }
        if !input.is_empty() {
            return Err(input.error("expected `,`"));
        }
        Ok(args)
    }
}

/// `[name, "name", ..]`: the names of Rust tools, identifiers or string literals.
fn parse_tool_names(input: syn::parse::ParseStream) -> syn::Result<Vec<String>> {
    let list;
    syn::bracketed!(list in input);
    let mut tools = Vec::new();
    while !list.is_empty() {
        if list.peek(LitStr) {
            tools.push(list.parse::<LitStr>()?.value());
        } else {
            tools.push(list.parse::<syn::Ident>()?.to_string());
        }
        if list.parse::<Option<syn::Token![,]>>()?.is_none() {
            break;
        }
    }
    if !list.is_empty() {
        return Err(list.error("expected `,` between tool names"));
    }
    Ok(tools)
}

/// The file `lit` names, relative to the crate root, or the compile error saying why not.
fn resolve(lit: &LitStr) -> Result<(String, PathBuf), proc_macro2::TokenStream> {
    let rel = lit.value();
    if Path::new(&rel).is_absolute() {
        return Err(syn::Error::new(
            lit.span(),
            "use a path relative to the crate root (CARGO_MANIFEST_DIR), not an absolute path",
        )
        .to_compile_error());
    }
    let Some(manifest) = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        return Err(syn::Error::new(
            lit.span(),
            "CARGO_MANIFEST_DIR is not set; build with cargo",
        )
        .to_compile_error());
    };
    let path = manifest.join(&rel);
    if !path.is_file() {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "cannot read `{rel}`: file not found (the path is relative to the crate root, {})",
                manifest.display()
            ),
        )
        .to_compile_error());
    }
    Ok((rel, path))
}

/// Every error of a failed check as a compile error at the macro's argument, plus the
/// tracking of the files read (so fixing them rebuilds).
fn errors_of(
    lit: &LitStr,
    rel: &str,
    checked: &flatmachine_build::Checked,
) -> proc_macro2::TokenStream {
    let db = checked.db();
    let mut errors: Vec<proc_macro2::TokenStream> = checked
        .diagnostics
        .errors()
        .map(|d| {
            let text = d.render(db, false);
            let text = text
                .strip_prefix("error: ")
                .unwrap_or(&text)
                .trim_end()
                .to_string();
            syn::Error::new(lit.span(), text).to_compile_error()
        })
        .collect();
    if errors.is_empty() {
        errors.push(
            syn::Error::new(lit.span(), format!("`{rel}` could not be compiled"))
                .to_compile_error(),
        );
    }
    let tracking = flatmachine_build::codegen::tracking_items(&checked.files_read());
    quote! {
        #(#tracking)*
        #(#errors)*
    }
}

fn expand_agent(lit: &LitStr) -> proc_macro2::TokenStream {
    let (rel, path) = match resolve(lit) {
        Ok(found) => found,
        Err(e) => return e,
    };
    let opts = flatmachine_build::CodegenOptions {
        track_files_read: true,
        ..Default::default()
    };
    match flatmachine_build::compile_agent(&path, Some(rel.clone()), &opts) {
        Ok(compiled) => compiled.tokens,
        Err(checked) => errors_of(lit, &rel, &checked),
    }
}

fn expand(args: &Args) -> proc_macro2::TokenStream {
    let (lit, allow_warnings) = (&args.path, args.allow_warnings);
    let rel = lit.value();
    if Path::new(&rel).is_absolute() {
        return syn::Error::new(
            lit.span(),
            "use a path relative to the crate root (CARGO_MANIFEST_DIR), not an absolute path",
        )
        .to_compile_error();
    }
    let Some(manifest) = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        return syn::Error::new(
            lit.span(),
            "CARGO_MANIFEST_DIR is not set; build with cargo",
        )
        .to_compile_error();
    };
    let path = manifest.join(&rel);
    if !path.is_file() {
        return syn::Error::new(
            lit.span(),
            format!(
                "cannot read `{rel}`: file not found (the path is relative to the crate root, {})",
                manifest.display()
            ),
        )
        .to_compile_error();
    }
    let opts = flatmachine_build::CodegenOptions {
        track_files_read: true,
        warnings_as_deprecations: !allow_warnings,
        input_type: args.input.as_ref().map(|t| quote!(#t)),
        output_type: args.output.as_ref().map(|t| quote!(#t)),
        rust_tools: args.tools.clone().unwrap_or_default(),
        ..Default::default()
    };
    match flatmachine_build::compile(&path, Some(rel.clone()), &opts) {
        Ok(compiled) => compiled.tokens,
        Err(checked) => {
            let db = checked.db();
            let mut errors: Vec<proc_macro2::TokenStream> = checked
                .diagnostics
                .errors()
                .map(|d| {
                    let text = d.render(db, false);
                    let text = text
                        .strip_prefix("error: ")
                        .unwrap_or(&text)
                        .trim_end()
                        .to_string();
                    syn::Error::new(lit.span(), text).to_compile_error()
                })
                .collect();
            if errors.is_empty() {
                errors.push(
                    syn::Error::new(lit.span(), format!("`{rel}` could not be compiled"))
                        .to_compile_error(),
                );
            }
            let tracking = flatmachine_build::codegen::tracking_items(&checked.files_read());
            quote! {
                #(#tracking)*
                #(#errors)*
            }
        }
    }
}
