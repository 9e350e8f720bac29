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
/// `tools = [name, ..]` declares the Rust tools the application registers on the builder
/// (`MachineBuilder::tool`), so the compiler can check `tool_loop` states and their
/// `allowed_tools` / `denied_tools` against them: `flatmachine!("m.yml", tools = [word_count,
/// "read-notes"])` (identifiers or string literals).
#[proc_macro]
pub fn flatmachine(input: TokenStream) -> TokenStream {
    let args = parse_macro_input!(input as Args);
    expand(&args.path, args.allow_warnings, args.tools).into()
}

/// `"path.yml"`, then optionally `allow_warnings` and `tools = [..]`, comma-separated.
struct Args {
    path: LitStr,
    allow_warnings: bool,
    tools: Vec<String>,
}

impl syn::parse::Parse for Args {
    fn parse(input: syn::parse::ParseStream<'_>) -> syn::Result<Self> {
        let path: LitStr = input.parse()?;
        let mut allow_warnings = false;
        let mut tools = Vec::new();
        while input.parse::<Option<syn::Token![,]>>()?.is_some() && !input.is_empty() {
            let flag: syn::Ident = input.parse()?;
            if flag == "allow_warnings" {
                allow_warnings = true;
            } else if flag == "tools" {
                input.parse::<syn::Token![=]>()?;
                let list;
                syn::bracketed!(list in input);
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
            } else {
                return Err(syn::Error::new(
                    flag.span(),
                    "expected `allow_warnings` or `tools = [..]`",
                ));
            }
        }
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the macro's arguments"));
        }
        Ok(Args {
            path,
            allow_warnings,
            tools,
        })
    }
}

fn expand(lit: &LitStr, allow_warnings: bool, tools: Vec<String>) -> proc_macro2::TokenStream {
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
        rust_tools: tools,
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
