//! The code generated for conditions is valid Rust and pretty-prints readably.
//!
//! (Compiling it against `flatmachine-runtime` and evaluating it is covered end to end by the
//! code generator's tests.)

use flatmachine_build::expr::{condition_tokens, parse};
use proc_macro2::{Ident, Span, TokenStream};
use quote::quote;

const CONDITIONS: &[&str] = &[
    "",
    "context.score >= 8",
    "context.score >= 8 and context.round < 4",
    "context.current == context.target",
    "not context.failed",
    "context.done",
    "context.done == true or context.attempts > 3",
    "0 < context.x <= 10",
    "context.a < context.b < context.c < context.d",
    "context.items[0].name == 'first'",
    "context['key with spaces'] != null",
    "context.matrix[1][-1] > 0",
    "(context.total - context.used) / context.total >= 0.25",
    "context.name + '!' == \"hi!\"",
    "context.tags * 2 == context.doubled",
    "-context.delta > 1e3",
    "not (context.a or context.b) and (context.c or context.d and context.e)",
    "context.x < 1 or true or context.y",
    "false and context.x",
    "context",
    "not context",
    "context == null",
    "(context.a < 1) == (context.b < 2)",
    "context.list[context.index] == context.expected",
    "context.a.b.c.d.e.f == None",
    "True and False or None",
];

fn generate(src: &str, ctx: &str) -> TokenStream {
    let expr = parse(src).unwrap_or_else(|e| panic!("`{src}` does not parse: {e}"));
    let rt = quote!(::flatmachine_runtime);
    condition_tokens(&expr, &rt, &Ident::new(ctx, Span::call_site()))
}

/// Pretty-prints the condition as the body of a function, as the code generator will.
fn pretty(src: &str) -> String {
    let body = generate(src, "ctx");
    let file: syn::File = syn::parse2(quote! {
        fn check(ctx: &::flatmachine_runtime::Context)
            -> ::flatmachine_runtime::expr::Result<bool> { #body }
    })
    .unwrap_or_else(|e| panic!("code for `{src}` is not a valid fn body: {e}"));
    prettyplease::unparse(&file)
}

#[test]
fn expr_generated_code_parses_as_an_expression() {
    for src in CONDITIONS {
        for ctx in ["ctx", "context", "condition", "v0"] {
            let tokens = generate(src, ctx);
            if let Err(e) = syn::parse2::<syn::Expr>(tokens.clone()) {
                panic!("code for `{src}` (ctx `{ctx}`) does not parse: {e}\n{tokens}");
            }
        }
    }
}

#[test]
fn expr_generated_code_pretty_prints() {
    for src in CONDITIONS {
        let text = pretty(src);
        assert!(text.contains("::flatmachine_runtime::expr::"), "{text}");
    }
}

#[test]
fn expr_simple_condition_reads_well() {
    let text = pretty("context.score >= 8");
    let expected = r#"fn check(
    ctx: &::flatmachine_runtime::Context,
) -> ::flatmachine_runtime::expr::Result<bool> {
    ::flatmachine_runtime::expr::ge(
            &::flatmachine_runtime::expr::path(ctx, &["score"]),
            &::flatmachine_runtime::expr::int(8),
        )
        .map_err(|e| e.in_expression("context.score >= 8"))
}
"#;
    assert_eq!(text, expected);
}

#[test]
fn expr_fallible_condition_uses_a_local_fn() {
    let text = pretty("context.score >= 8 and context.round < 4");
    assert!(text.contains("fn condition("), "{text}");
    assert!(text.contains("condition(ctx)"), "{text}");
    let compact: String = text.split_whitespace().collect();
    assert!(
        compact.contains(")?&&::flatmachine_runtime::expr::lt("),
        "{text}"
    );
}

#[test]
fn expr_lookups_borrow_from_the_context() {
    let text = pretty("context.a.b.c == context.d");
    assert!(
        text.contains(r#"path(ctx, &["a", "b", "c"])"#),
        "nested fields are one borrowed lookup: {text}"
    );
    assert!(!text.contains("clone"), "{text}");
}

#[test]
fn expr_runtime_items_use_the_given_path() {
    let expr = parse("context.x[0] > 1 and context.y").unwrap();
    let rt = quote!(crate::my_runtime);
    let tokens = condition_tokens(&expr, &rt, &Ident::new("ctx", Span::call_site())).to_string();
    assert!(
        tokens.contains("crate :: my_runtime :: expr :: gt"),
        "{tokens}"
    );
    assert!(!tokens.contains("flatmachine_runtime"), "{tokens}");
}
