//! Unit tests for the condition parser and code generator.

use proc_macro2::{Ident, Span as TokSpan};
use proptest::prelude::*;
use quote::quote;

use super::*;

mod codegen;

/// A compact rendering of the tree, to check precedence and associativity.
fn sexp(node: &Node) -> String {
    match &node.kind {
        NodeKind::Literal(Literal::Null) => "null".to_owned(),
        NodeKind::Literal(Literal::Bool(b)) => b.to_string(),
        NodeKind::Literal(Literal::Int(i)) => i.to_string(),
        NodeKind::Literal(Literal::Float(f)) => format!("{f:?}"),
        NodeKind::Literal(Literal::Str(s)) => format!("{s:?}"),
        NodeKind::Context => "context".to_owned(),
        NodeKind::Field { base, name, .. } => format!("{}.{name}", sexp(base)),
        NodeKind::Index { base, index } => format!("{}[{}]", sexp(base), sexp(index)),
        NodeKind::Not(x) => format!("(not {})", sexp(x)),
        NodeKind::Neg(x) => format!("(neg {})", sexp(x)),
        NodeKind::Binary { op, lhs, rhs } => {
            format!("({} {} {})", op.as_str(), sexp(lhs), sexp(rhs))
        }
        NodeKind::Compare { first, rest } => {
            let mut out = format!("(cmp {}", sexp(first));
            for (op, n) in rest {
                out.push_str(&format!(" {} {}", op.as_str(), sexp(n)));
            }
            out.push(')');
            out
        }
        NodeKind::And(items) => format!(
            "(and {})",
            items.iter().map(sexp).collect::<Vec<_>>().join(" ")
        ),
        NodeKind::Or(items) => format!(
            "(or {})",
            items.iter().map(sexp).collect::<Vec<_>>().join(" ")
        ),
    }
}

fn tree(src: &str) -> String {
    match parse(src) {
        Ok(expr) => sexp(expr.root()),
        Err(e) => panic!("`{src}` failed to parse: {e:?}"),
    }
}

fn error(src: &str) -> ExprSyntaxError {
    match parse(src) {
        Ok(expr) => panic!("`{src}` parsed, expected an error: {}", sexp(expr.root())),
        Err(e) => e,
    }
}

/// Asserts the error's message and location (offset, len).
#[track_caller]
fn assert_error(src: &str, message: &str, offset: usize, len: usize) {
    let e = error(src);
    assert_eq!(e.message, message, "message for `{src}`");
    assert_eq!(
        (e.offset, e.len),
        (offset, len),
        "location for `{src}`: {e:?}"
    );
}

fn literal(src: &str) -> Literal {
    match parse(src).map(|e| e.root().kind.clone()) {
        Ok(NodeKind::Literal(lit)) => lit,
        other => panic!("`{src}` is not a literal: {other:?}"),
    }
}

/// Token text with the trailing commas rustfmt adds to `quote!` arguments removed.
fn norm(tokens: impl ToString) -> String {
    tokens.to_string().replace(" ,)", ")").replace(" ,]", "]")
}

/// The generated code without the `.map_err(...)` that names the condition in its errors
/// (checked on its own by `expr_codegen_errors_name_the_condition`).
fn tokens(src: &str) -> String {
    let (code, _) = tokens_and_naming(src);
    code
}

/// The generated code, split from the error-naming suffix (`true` when it was there).
fn tokens_and_naming(src: &str) -> (String, bool) {
    let expr = parse(src).expect("parses");
    let rt = quote!(::flatmachine_runtime);
    let ctx = Ident::new("ctx", TokSpan::call_site());
    let full = norm(condition_tokens(&expr, &rt, &ctx));
    let lit = proc_macro2::Literal::string(src);
    let suffix = norm(quote!(.map_err(|e| e.in_expression(#lit))));
    match full.strip_suffix(&format!(" {suffix}")) {
        Some(code) => (code.to_string(), true),
        None => (full, false),
    }
}

#[test]
fn expr_codegen_errors_name_the_condition() {
    // Fallible conditions (a local fn, or a lone ordering call) name their source on error.
    for src in [
        "context.score >= 8",
        "context.a < 1 and context.b",
        "0 < context.x <= 10",
        "context.a[0] == 1",
    ] {
        assert!(
            tokens_and_naming(src).1,
            "`{src}` should name itself in errors"
        );
    }
    // Infallible ones stay a plain `ok(...)`.
    for src in ["context.failed", "not context.x", "context.a == 1", "true"] {
        assert!(!tokens_and_naming(src).1, "`{src}` cannot fail");
    }
}

// ---- precedence and associativity -------------------------------------------------------

#[test]
fn expr_precedence_boolean_operators() {
    assert_eq!(
        tree("context.a or context.b and context.c"),
        "(or context.a (and context.b context.c))"
    );
    assert_eq!(
        tree("context.a and context.b or context.c"),
        "(or (and context.a context.b) context.c)"
    );
    assert_eq!(
        tree("not context.a and context.b"),
        "(and (not context.a) context.b)"
    );
    assert_eq!(tree("not context.a == 1"), "(not (cmp context.a == 1))");
    assert_eq!(tree("not not context.a"), "(not (not context.a))");
    assert_eq!(
        tree("context.a and (context.b or context.c)"),
        "(and context.a (or context.b context.c))"
    );
    // `and` / `or` chains are flat, like Python's BoolOp.
    assert_eq!(tree("1 or 2 or 3 or 4"), "(or 1 2 3 4)");
    assert_eq!(tree("1 and 2 and 3"), "(and 1 2 3)");
}

#[test]
fn expr_precedence_arithmetic() {
    assert_eq!(tree("1 + 2 * 3 == 7"), "(cmp (+ 1 (* 2 3)) == 7)");
    assert_eq!(tree("(1 + 2) * 3"), "(* (+ 1 2) 3)");
    assert_eq!(tree("1 - 2 - 3"), "(- (- 1 2) 3)");
    assert_eq!(tree("8 / 4 / 2"), "(/ (/ 8 4) 2)");
    assert_eq!(tree("8 / 4 * 2"), "(* (/ 8 4) 2)");
    assert_eq!(tree("1 + 2 - 3 + 4"), "(+ (- (+ 1 2) 3) 4)");
    assert_eq!(tree("-context.a * 2"), "(* (neg context.a) 2)");
    assert_eq!(tree("-context.a.b[0]"), "(neg context.a.b[0])");
    assert_eq!(tree("2 * -3"), "(* 2 -3)");
    assert_eq!(tree("1 - -1"), "(- 1 -1)");
    assert_eq!(tree("--1"), "1");
    assert_eq!(tree("- -context.x"), "(neg (neg context.x))");
    assert_eq!(
        tree("context.a + 1 > context.b * 2 and not context.c"),
        "(and (cmp (+ context.a 1) > (* context.b 2)) (not context.c))"
    );
}

#[test]
fn expr_precedence_postfix() {
    assert_eq!(tree("context.a.b.c"), "context.a.b.c");
    assert_eq!(tree("context['a'].b[0][-1]"), "context[\"a\"].b[0][-1]");
    assert_eq!(
        tree("context.a[context.i + 1].b"),
        "context.a[(+ context.i 1)].b"
    );
    assert_eq!(tree("(context.a).b"), "context.a.b");
    assert_eq!(tree("'abc'[0]"), "\"abc\"[0]");
    // Field names may be keywords or literal names after a dot.
    assert_eq!(tree("context.not.in.None.true"), "context.not.in.None.true");
    assert_eq!(tree("context . a"), "context.a");
}

#[test]
fn expr_chained_comparisons() {
    assert_eq!(tree("1 < 2 < 3"), "(cmp 1 < 2 < 3)");
    assert_eq!(
        tree("context.a <= context.b < context.c >= 0"),
        "(cmp context.a <= context.b < context.c >= 0)"
    );
    assert_eq!(tree("1 == 1 != 2"), "(cmp 1 == 1 != 2)");
    assert_eq!(tree("(1 < 2) < 3"), "(cmp (cmp 1 < 2) < 3)");
    assert_eq!(tree("1 < (2 < 3)"), "(cmp 1 < (cmp 2 < 3))");
    assert_eq!(tree("1 + 1 < 3 == true"), "(cmp (+ 1 1) < 3 == true)");
}

#[test]
fn expr_spans() {
    let expr = parse("  context.a.b >= 8 and not context.c").unwrap();
    let root = expr.root();
    assert_eq!(root.span, Span::new(2, 34));
    let NodeKind::And(items) = &root.kind else {
        panic!("expected and")
    };
    assert_eq!(items[0].span, Span::new(2, 16));
    assert_eq!(items[1].span, Span::new(23, 13));
    let NodeKind::Compare { first, rest } = &items[0].kind else {
        panic!("expected a comparison")
    };
    assert_eq!(first.span, Span::new(2, 11));
    assert_eq!(rest[0].1.span, Span::new(17, 1));
    let NodeKind::Field {
        base, name_span, ..
    } = &first.kind
    else {
        panic!("expected a field")
    };
    assert_eq!(*name_span, Span::new(12, 1));
    assert_eq!(base.span, Span::new(2, 9));
    // Byte offsets, not characters.
    let expr = parse("'é' == context.ü").unwrap();
    let NodeKind::Compare { rest, .. } = &expr.root().kind else {
        panic!("expected a comparison")
    };
    assert_eq!(rest[0].1.span, Span::new(8, 10));
    // A folded negative literal covers the minus sign.
    assert_eq!(parse("- 5").unwrap().root().span, Span::new(0, 3));
    assert_eq!(Span::new(3, 2).end(), 5);
    assert_eq!(Span::new(3, 2).to(Span::new(1, 1)), Span::new(1, 4));
}

// ---- literals ---------------------------------------------------------------------------

#[test]
fn expr_integer_literals() {
    assert_eq!(literal("0"), Literal::Int(0));
    assert_eq!(literal("42"), Literal::Int(42));
    assert_eq!(literal("1_000_000"), Literal::Int(1_000_000));
    assert_eq!(literal("00"), Literal::Int(0));
    assert_eq!(literal("-5"), Literal::Int(-5));
    assert_eq!(literal("9223372036854775807"), Literal::Int(i64::MAX));
    assert_eq!(literal("-9223372036854775808"), Literal::Int(i64::MIN));
    assert_eq!(literal("(-9223372036854775807)"), Literal::Int(-i64::MAX));
}

#[test]
fn expr_float_literals() {
    assert_eq!(literal("1.5"), Literal::Float(1.5));
    assert_eq!(literal("1e3"), Literal::Float(1000.0));
    assert_eq!(literal("1E3"), Literal::Float(1000.0));
    assert_eq!(literal("2.5e-3"), Literal::Float(0.0025));
    assert_eq!(literal("2.5e+3"), Literal::Float(2500.0));
    assert_eq!(literal(".5"), Literal::Float(0.5));
    assert_eq!(literal("5."), Literal::Float(5.0));
    assert_eq!(literal("1.e2"), Literal::Float(100.0));
    assert_eq!(literal("1_0.2_5"), Literal::Float(10.25));
    assert_eq!(literal("-0.0"), Literal::Float(-0.0));
    assert_eq!(literal("-1.5"), Literal::Float(-1.5));
    assert_eq!(literal("0.0"), Literal::Float(0.0));
    assert_eq!(tree("1.5 + .5"), "(+ 1.5 0.5)");
    assert_eq!(tree("context.a or .5"), "(or context.a 0.5)");
    assert_eq!(tree("not .5"), "(not 0.5)");
    assert_eq!(tree("(.5)"), "0.5");
    assert_eq!(tree("context[.5]"), "context[0.5]");
}

#[test]
fn expr_string_literals() {
    assert_eq!(literal("'single'"), Literal::Str("single".into()));
    assert_eq!(literal("\"double\""), Literal::Str("double".into()));
    assert_eq!(literal("''"), Literal::Str(String::new()));
    assert_eq!(literal("\"\""), Literal::Str(String::new()));
    assert_eq!(
        literal(r#"'a\nb\tc\\d\'e\"f\rg'"#),
        Literal::Str("a\nb\tc\\d'e\"f\rg".into())
    );
    assert_eq!(literal(r#""it's""#), Literal::Str("it's".into()));
    assert_eq!(literal(r#"'say "hi"'"#), Literal::Str("say \"hi\"".into()));
    assert_eq!(literal("'héllo ✓'"), Literal::Str("héllo ✓".into()));
    assert_eq!(
        literal("'{{ not jinja }}'"),
        Literal::Str("{{ not jinja }}".into())
    );
    assert_eq!(
        literal("'# not a comment'"),
        Literal::Str("# not a comment".into())
    );
}

#[test]
fn expr_keyword_literals() {
    assert_eq!(literal("true"), Literal::Bool(true));
    assert_eq!(literal("True"), Literal::Bool(true));
    assert_eq!(literal("false"), Literal::Bool(false));
    assert_eq!(literal("False"), Literal::Bool(false));
    assert_eq!(literal("null"), Literal::Null);
    assert_eq!(literal("None"), Literal::Null);
    assert_eq!(tree("context"), "context");
}

#[test]
fn expr_whitespace_and_comments() {
    assert_eq!(
        tree("context.a\n  and\tcontext.b\r\n"),
        "(and context.a context.b)"
    );
    assert_eq!(tree("context.a # a comment"), "context.a");
    assert_eq!(
        tree("context.a # a comment\n or context.b"),
        "(or context.a context.b)"
    );
}

#[test]
fn expr_empty_is_always_true() {
    for src in ["", " ", "\n\t  ", "\r\n"] {
        let expr = parse(src).unwrap();
        assert_eq!(expr.root().kind, NodeKind::Literal(Literal::Bool(true)));
        assert_eq!(expr.source(), src);
        assert!(expr.context_paths().is_empty());
        assert_eq!(
            tokens(src),
            norm(quote!(::flatmachine_runtime::expr::ok(true)))
        );
    }
}

// ---- scope ------------------------------------------------------------------------------

#[test]
fn expr_only_context_is_in_scope() {
    assert_error(
        "input.x",
        "conditions can only read `context`; `input` is not in scope here",
        0,
        5,
    );
    assert_error(
        "context.a == 1 and output.y > 1",
        "conditions can only read `context`; `output` is not in scope here",
        19,
        6,
    );
    assert!(
        error("input.x")
            .help
            .is_some_and(|h| h.contains("context: { x:"))
    );
    assert!(
        error("output.x > 1")
            .help
            .is_some_and(|h| h.contains("output_to_context"))
    );

    let e = error("contxt.x > 1");
    assert_eq!(
        e.message,
        "unknown name `contxt`: conditions can only read `context`"
    );
    assert_eq!((e.offset, e.len), (0, 6));
    assert_eq!(e.help.as_deref(), Some("did you mean `context`?"));
    assert_eq!(
        error("Context.x").help.as_deref(),
        Some("did you mean `context`?")
    );
    assert_eq!(
        error("context.x == ture").help.as_deref(),
        Some("did you mean `true`?")
    );
    assert_eq!(
        error("context.x == nul").help.as_deref(),
        Some("did you mean `null`?")
    );
    let e = error("foo");
    assert_eq!(
        e.message,
        "unknown name `foo`: conditions can only read `context`"
    );
    assert_eq!(e.help, None);
    assert_eq!(
        e.to_string(),
        "unknown name `foo`: conditions can only read `context`"
    );
    assert_eq!(
        error("contxt").to_string(),
        "unknown name `contxt`: conditions can only read `context` (help: did you mean \
         `context`?)"
    );
}

// ---- unsupported syntax -----------------------------------------------------------------

#[test]
fn expr_unsupported_operators() {
    assert_error(
        "context.x in context.y",
        "the `in` operator is not supported",
        10,
        2,
    );
    assert_error(
        "context.x not in context.y",
        "the `not in` operator is not supported",
        10,
        6,
    );
    assert_error(
        "context.x is None",
        "the `is` operator is not supported",
        10,
        2,
    );
    assert_eq!(
        error("context.x is None").help.as_deref(),
        Some("use `==` (e.g. `context.x == null`)")
    );
    assert_error(
        "context.x is not None",
        "the `is not` operator is not supported",
        10,
        6,
    );
    assert_error(
        "context.x % 2 == 0",
        "the `%` operator is not supported",
        10,
        1,
    );
    assert_error(
        "context.x // 2",
        "floor division `//` is not supported (`/` is true division)",
        10,
        2,
    );
    assert_error(
        "context.x ** 2",
        "the power operator `**` is not supported",
        10,
        2,
    );
    assert_error(
        "context.x & 1",
        "bitwise operators are not supported",
        10,
        1,
    );
    assert_error(
        "context.x | 1",
        "bitwise operators are not supported",
        10,
        1,
    );
    assert_error(
        "context.x ^ 1",
        "bitwise operators are not supported",
        10,
        1,
    );
    assert_error("~context.x", "bitwise operators are not supported", 0, 1);
    assert_error(
        "context.x << 1",
        "bitwise operators are not supported",
        10,
        2,
    );
    assert_error(
        "context.x >> 1",
        "bitwise operators are not supported",
        10,
        2,
    );
    assert_error("context.x @ 1", "the `@` operator is not supported", 10, 1);
    assert_error("+1", "unary `+` is not supported", 0, 1);
    assert_error(
        "(x := 1)",
        "assignment expressions (`:=`) are not supported",
        3,
        2,
    );
    assert_error(
        "context.x := 1",
        "assignment expressions (`:=`) are not supported",
        10,
        2,
    );

    let e = error("context.x = 1");
    assert_eq!(
        (e.message.as_str(), e.offset, e.len),
        (
            "`=` is assignment, which is not supported in a condition",
            10,
            1
        )
    );
    assert_eq!(e.help.as_deref(), Some("use `==` to compare"));
    let e = error("!context.x");
    assert_eq!(
        (e.message.as_str(), e.offset),
        ("`!` is not an operator here", 0)
    );
    assert_eq!(e.help.as_deref(), Some("use `not` to negate"));
    let e = error("context.a && context.b");
    assert_eq!((e.offset, e.len), (10, 2));
    assert_eq!(e.help.as_deref(), Some("use `and`"));
    let e = error("context.a || context.b");
    assert_eq!((e.offset, e.len), (10, 2));
    assert_eq!(e.help.as_deref(), Some("use `or`"));
    let e = error("context.a <> 1");
    assert_eq!((e.offset, e.len), (10, 2));
    assert_eq!(e.help.as_deref(), Some("use `!=`"));
}

#[test]
fn expr_unsupported_constructs() {
    assert_error("[1, 2]", "list literals are not supported", 0, 1);
    assert_error("context.x == [1]", "list literals are not supported", 13, 1);
    assert_error("{'a': 1}", "dict and set literals are not supported", 0, 1);
    assert_error("(1, 2)", "tuples are not supported", 2, 1);
    assert_error("1, 2", "tuples are not supported", 1, 1);
    assert_error(
        "()",
        "empty parentheses `()` (tuples) are not supported",
        0,
        2,
    );
    assert_error(
        "len(context.x) > 1",
        "function calls are not supported",
        0,
        4,
    );
    assert_error(
        "context.x.lower() == 'a'",
        "method calls are not supported",
        0,
        16,
    );
    assert_error("(context)(1)", "function calls are not supported", 1, 9);
    assert_error("(context.x)(1)", "method calls are not supported", 1, 11);
    assert_error("lambda: 1", "lambda expressions are not supported", 0, 6);
    assert_error(
        "1 if context.x else 2",
        "conditional expressions (`x if c else y`) are not supported",
        2,
        2,
    );
    assert_error(
        "(1 if context.x else 2)",
        "conditional expressions (`x if c else y`) are not supported",
        3,
        2,
    );
    assert_error("await context.x", "`await` is not supported", 0, 5);
    assert_error("context.a[1:2]", "slices and `:` are not supported", 11, 1);
    assert_error(
        "context.a[1, 2]",
        "subscripts with several indexes are not supported",
        11,
        1,
    );
    assert_error("context.a[]", "empty subscript `[]`", 9, 2);
    assert_error(
        "context.x == 'a' 'b'",
        "expected an operator before this string",
        17,
        3,
    );
    assert_error(
        "context.x context.y",
        "expected an operator or the end of the expression, found `context`",
        10,
        7,
    );
    assert_error(
        "x for x in y",
        "unknown name `x`: conditions can only read `context`",
        0,
        1,
    );
    assert_error("context.x for", "comprehensions are not supported", 10, 3);
    assert_error("context.x not", "expected an operator, found `not`", 10, 3);
    assert_error(
        "1 + not context.x",
        "`not` must be parenthesised here",
        4,
        3,
    );
    assert_eq!(tree("1 + (not context.x)"), "(+ 1 (not context.x))");
    assert_error("and", "expected a value, found `and`", 0, 3);
    assert_error("context.x and or", "expected a value, found `or`", 14, 2);
}

#[test]
fn expr_jinja_braces() {
    let jinja = "conditions are plain expressions, not Jinja templates: remove the `{{ }}`";
    assert_error("{{ context.x }}", jinja, 0, 15);
    assert_error("{{context.x > 1}}", jinja, 0, 17);
    assert_error("context.x == {{ y }}", jinja, 13, 7);
    assert_error("{{ context.x", jinja, 0, 2);
    assert_error(
        "{% if context.x %}",
        "conditions are plain expressions, not Jinja templates: remove the `{% %}`",
        0,
        18,
    );
}

#[test]
fn expr_structural_errors() {
    assert_error(
        "context.x >=",
        "unexpected end of expression: expected a value",
        12,
        0,
    );
    assert_error(
        "not",
        "unexpected end of expression: expected a value",
        3,
        0,
    );
    assert_error(
        "context.x and",
        "unexpected end of expression: expected a value",
        13,
        0,
    );
    assert_error("(context.x", "unclosed `(`", 0, 1);
    assert_error("((context.x)", "unclosed `(`", 0, 1);
    assert_error("context.x)", "unmatched `)`", 9, 1);
    assert_error("context.a]", "unmatched `]`", 9, 1);
    assert_error("context.a[0", "unclosed `[`", 9, 1);
    assert_error("context.a[0 1]", "expected `]`, found number `1`", 12, 1);
    assert_error(
        "(1 2)",
        "expected `)` or an operator, found number `2`",
        3,
        1,
    );
    assert_error(
        "context.",
        "expected a field name after `.`, found the end of the expression",
        8,
        0,
    );
    assert_error(
        "context.'a'",
        "expected a field name after `.`, found a string",
        8,
        3,
    );
    let e = error("context.items.0 == 1");
    assert_eq!(
        (e.message.as_str(), e.offset, e.len),
        ("expected a field name after `.`", 14, 1)
    );
    assert_eq!(e.help.as_deref(), Some("use `[0]` to index an array"));
    assert_error("context.x $ 1", "unexpected character `$`", 10, 1);
    assert_error("context.x → 1", "unexpected character `→`", 10, 3);
    assert_error("'é' == context.ü $", "unexpected character `$`", 19, 1);
    assert_error("context.x;", "unexpected character `;`", 9, 1);
    assert_error("context.x \\\n == 1", "unexpected character `\\\\`", 10, 1);
    assert_error("==", "expected a value, found `==`", 0, 2);
}

#[test]
fn expr_literal_errors() {
    assert_error("'abc", "unterminated string literal", 0, 4);
    assert_error(
        "context.x == \"abc\n\"",
        "unterminated string literal",
        13,
        4,
    );
    assert_error("'abc\\", "unterminated string literal", 0, 5);
    let e = error(r"'a\qb'");
    assert_eq!(
        (e.message.as_str(), e.offset, e.len),
        ("unsupported escape sequence `\\q`", 2, 2)
    );
    assert!(e.help.is_some());
    assert_error(
        "f'{context.x}'",
        "string prefixes (`f`, `r`, `b`, `u`) are not supported: write a plain 'string'",
        0,
        1,
    );
    assert_error(
        "context.x == rb'x'",
        "string prefixes (`f`, `r`, `b`, `u`) are not supported: write a plain 'string'",
        13,
        2,
    );
    assert_error("'''x'''", "triple-quoted strings are not supported", 0, 3);
    assert_error("0x10", "only decimal number literals are supported", 0, 4);
    assert_error("0b1", "only decimal number literals are supported", 0, 3);
    assert_error(
        "007",
        "leading zeros in integer literals are not permitted",
        0,
        3,
    );
    assert_error(
        "99999999999999999999",
        "integer literal is too large (the maximum is 9223372036854775807)",
        0,
        20,
    );
    assert_error(
        "9223372036854775808",
        "integer literal is too large (the maximum is 9223372036854775807)",
        0,
        19,
    );
    assert_error("1e999", "float literal is out of range", 0, 5);
    assert_error("1abc", "invalid number literal", 0, 4);
    assert_error("1_", "invalid number literal", 0, 2);
    assert_error("1.x", "invalid number literal", 0, 3);
    assert_error("1e", "invalid number literal", 0, 2);
    assert_error("1j", "invalid number literal", 0, 2);
}

#[test]
fn expr_depth_limits() {
    let deep_parens = format!("{}1{}", "(".repeat(200), ")".repeat(200));
    assert!(error(&deep_parens).message.contains("nested too deeply"));
    let deep_not = format!("{}context.x", "not ".repeat(200));
    assert!(error(&deep_not).message.contains("nested too deeply"));
    let deep_neg = format!("{}context.x", "-".repeat(200));
    assert!(error(&deep_neg).message.contains("nested too deeply"));
    let long_sum = format!("{}1", "1 + ".repeat(200));
    assert!(error(&long_sum).message.contains("nested too deeply"));
    let long_path = format!("context{}", ".a".repeat(200));
    assert!(error(&long_path).message.contains("nested too deeply"));
    let deep_index = format!("context{}", "[0]".repeat(200));
    assert!(error(&deep_index).message.contains("nested too deeply"));
    // Flat boolean chains are not deep.
    let long_or = vec!["context.x"; 500].join(" or ");
    assert!(parse(&long_or).is_ok());
    let ok_parens = format!("{}1{}", "(".repeat(50), ")".repeat(50));
    assert!(parse(&ok_parens).is_ok());
}

// ---- context paths ----------------------------------------------------------------------

#[test]
fn expr_context_paths() {
    let paths = |src: &str| parse(src).unwrap().context_paths();
    assert_eq!(
        paths("context.a.b > 1 and context['c'].d == context.a.b"),
        vec![vec!["a", "b"], vec!["c", "d"]]
    );
    assert_eq!(paths("context.a[context.i].b"), vec![vec!["a"], vec!["i"]]);
    assert_eq!(paths("context.a[0].b"), vec![vec!["a"]]);
    assert_eq!(paths("context.a.b.c[-1]"), vec![vec!["a", "b", "c"]]);
    assert_eq!(paths("(context.x + 1).y"), vec![vec!["x"]]);
    assert_eq!(paths("not context.x"), vec![vec!["x"]]);
    assert_eq!(
        paths("-context.x < context['y z']"),
        vec![vec!["x"], vec!["y z"]]
    );
    assert!(paths("context == null").is_empty());
    assert!(paths("context[0]").is_empty());
    assert!(paths("1 + 1").is_empty());
    assert_eq!(
        paths("context.a < context.b < context.c"),
        vec![vec!["a"], vec!["b"], vec!["c"]]
    );
    assert_eq!(paths("context.a or context.a"), vec![vec!["a"]]);

    let refs = parse("context.a.b > 1 or context.a.b")
        .unwrap()
        .context_path_refs();
    assert_eq!(
        refs,
        vec![
            ContextPath {
                segments: vec!["a".into(), "b".into()],
                span: Span::new(0, 11)
            },
            ContextPath {
                segments: vec!["a".into(), "b".into()],
                span: Span::new(19, 11)
            },
        ]
    );
}

// ---- robustness -------------------------------------------------------------------------

fn check_no_panic(src: &str) {
    match parse(src) {
        Ok(expr) => {
            let _ = expr.context_paths();
            let rt = quote!(::flatmachine_runtime);
            let ctx = Ident::new("ctx", TokSpan::call_site());
            let out = condition_tokens(&expr, &rt, &ctx);
            if let Err(e) = syn::parse2::<syn::Expr>(out.clone()) {
                panic!("generated code for `{src}` does not parse: {e}\n{out}");
            }
        }
        Err(e) => {
            assert!(
                e.offset + e.len <= src.len(),
                "{e:?} out of bounds for {src:?}"
            );
            assert!(src.is_char_boundary(e.offset), "{e:?} for {src:?}");
            assert!(src.is_char_boundary(e.offset + e.len), "{e:?} for {src:?}");
            assert!(!e.message.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn expr_no_panic_on_arbitrary_input(src in any::<String>()) {
        check_no_panic(&src);
    }

    #[test]
    fn expr_no_panic_on_expression_like_input(
        src in r#"[a-z .()\[\]'"0-9+*/<>=!_-]{0,40}|(context|not|and|or|true|None| |\.|[0-9]|\.5|e|\[|\]|\(|\)|'a'|<=|==|-|\+|\*|/|[a-z])*"#
    ) {
        check_no_panic(&src);
    }
}
