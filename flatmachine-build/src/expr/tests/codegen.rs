//! Tests of the Rust code generated for conditions.

use super::*;

// ---- code generation --------------------------------------------------------------------

#[test]
fn expr_codegen_infallible_is_plain_ok() {
    let out = tokens("context.done == true");
    let expected = quote!(::flatmachine_runtime::expr::ok(
        ::flatmachine_runtime::expr::eq(
            &::flatmachine_runtime::expr::path(ctx, &["done"]),
            &::flatmachine_runtime::expr::boolean(true)
        )
    ));
    assert_eq!(out, norm(expected));
    let out = tokens("not context.failed");
    let expected = quote!(::flatmachine_runtime::expr::ok(
        !::flatmachine_runtime::expr::truthy(&::flatmachine_runtime::expr::path(ctx, &["failed"]))
    ));
    assert_eq!(out, norm(expected));
}

#[test]
fn expr_codegen_fallible_uses_local_fn() {
    let out = tokens("context.score >= 8 and context.round < 4");
    let expected = quote!({
        fn condition(
            ctx: &::flatmachine_runtime::expr::Context,
        ) -> ::flatmachine_runtime::expr::Result<bool> {
            Ok(::flatmachine_runtime::expr::ge(
                &::flatmachine_runtime::expr::path(ctx, &["score"]),
                &::flatmachine_runtime::expr::int(8),
            )? && ::flatmachine_runtime::expr::lt(
                &::flatmachine_runtime::expr::path(ctx, &["round"]),
                &::flatmachine_runtime::expr::int(4),
            )?)
        }
        condition(ctx)
    });
    assert_eq!(out, norm(expected));
}

#[test]
fn expr_codegen_single_ordering_is_the_result() {
    let out = tokens("context.score >= 8");
    let expected = quote!(::flatmachine_runtime::expr::ge(
        &::flatmachine_runtime::expr::path(ctx, &["score"]),
        &::flatmachine_runtime::expr::int(8)
    ));
    assert_eq!(out, norm(expected));
    let out = tokens("context.a[0] < 1");
    let expected = quote!({
        fn condition(
            ctx: &::flatmachine_runtime::expr::Context,
        ) -> ::flatmachine_runtime::expr::Result<bool> {
            ::flatmachine_runtime::expr::lt(
                &::flatmachine_runtime::expr::index(
                    ::flatmachine_runtime::expr::path(ctx, &["a"]),
                    &::flatmachine_runtime::expr::int(0),
                )?,
                &::flatmachine_runtime::expr::int(1),
            )
        }
        condition(ctx)
    });
    assert_eq!(out, norm(expected));
}

#[test]
fn expr_codegen_folds_constants_without_skipping_errors() {
    let ok = |b: bool| norm(quote!(::flatmachine_runtime::expr::ok(#b)));
    assert_eq!(tokens("context.x or true"), ok(true));
    assert_eq!(tokens("true or context.x < 1"), ok(true));
    assert_eq!(tokens("false and context.x < 1"), ok(false));
    assert_eq!(tokens("not false"), ok(true));
    assert_eq!(tokens("not (1 and 'x')"), ok(false));
    assert_eq!(tokens("context.x and true"), tokens("context.x"));
    assert_eq!(tokens("false or context.x or null"), tokens("context.x"));
    assert_eq!(
        tokens("context.a < 1 and 1 and context.b"),
        tokens("context.a < 1 and context.b")
    );
    // A deciding constant after a fallible operand still evaluates it (for its error).
    let out = tokens("context.x < 1 or true or context.y");
    let expected = quote!({
        fn condition(
            ctx: &::flatmachine_runtime::expr::Context,
        ) -> ::flatmachine_runtime::expr::Result<bool> {
            Ok({
                let _ = ::flatmachine_runtime::expr::lt(
                    &::flatmachine_runtime::expr::path(ctx, &["x"]),
                    &::flatmachine_runtime::expr::int(1),
                )?;
                true
            })
        }
        condition(ctx)
    });
    assert_eq!(out, norm(expected));
}

#[test]
fn expr_codegen_constant_fallible_code_ignores_context() {
    let out = tokens("1 / 0 == 1");
    assert!(out.contains("fn condition (_ : &"), "{out}");
    assert!(out.contains("condition (ctx)"), "{out}");
}

#[test]
fn expr_codegen_chains_bind_each_operand_once() {
    let out = tokens("0 < context.x <= 10");
    let expected = quote!({
        fn condition(
            ctx: &::flatmachine_runtime::expr::Context,
        ) -> ::flatmachine_runtime::expr::Result<bool> {
            Ok({
                let v0 = ::flatmachine_runtime::expr::int(0);
                let v1 = ::flatmachine_runtime::expr::path(ctx, &["x"]);
                ::flatmachine_runtime::expr::lt(&v0, &v1)? && {
                    let v2 = ::flatmachine_runtime::expr::int(10);
                    ::flatmachine_runtime::expr::le(&v1, &v2)?
                }
            })
        }
        condition(ctx)
    });
    assert_eq!(out, norm(expected));
}

#[test]
fn expr_codegen_parenthesises_boolean_operators() {
    let out = tokens("not (context.a or context.b) and (context.c or context.d and context.e)");
    assert!(
        out.contains("! (:: flatmachine_runtime :: expr :: truthy"),
        "{out}"
    );
    assert!(
        out.contains("&& (:: flatmachine_runtime :: expr :: truthy"),
        "{out}"
    );
    assert!(
        out.contains("|| (:: flatmachine_runtime :: expr :: truthy"),
        "{out}"
    );
    // `not not x` folds to the truthiness of x.
    assert_eq!(tokens("not not context.x"), tokens("context.x"));
}

#[test]
fn expr_codegen_literals() {
    let out =
        tokens("context.x == -9223372036854775808 or context.x == -1.5e300 or context.s == 'a\"b'");
    assert!(out.contains("int (i64 :: MIN)"), "{out}");
    assert!(out.contains("float (- 1.5e300)"), "{out}");
    assert!(out.contains(r#"string ("a\"b")"#), "{out}");
    assert_eq!(tokens("null"), tokens("false"));
    assert_eq!(tokens("'x'"), tokens("true"));
    assert_eq!(tokens("0.0"), tokens("false"));
}

#[test]
fn expr_codegen_avoids_name_clashes() {
    let expr = parse("1 < context.x < 3").unwrap();
    let rt = quote!(rt);
    for name in ["condition", "v0", "value"] {
        let ctx = Ident::new(name, TokSpan::call_site());
        let out = condition_tokens(&expr, &rt, &ctx).to_string();
        syn::parse_str::<syn::Expr>(&out).unwrap();
        if name == "condition" {
            assert!(out.contains("fn condition_fn (condition"), "{out}");
        } else {
            assert!(out.contains("let operand0"), "{out}");
        }
    }
}
