//! Tests for template rendering: our rules and the SEMANTICS.md items 1-7 decisions.

use super::*;
use serde_json::json;

thread_local! {
    static COMPILES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Called whenever a static slot is classified (test builds only).
pub(super) fn count_compile() {
    COMPILES.with(|c| c.set(c.get() + 1));
}

fn compiles() -> usize {
    COMPILES.with(|c| c.get())
}

/// The SEMANTICS.md item 1 input.
fn reference_input() -> Json {
    json!({
        "n": 1000, "s": "1000", "f": 1.5, "b": true, "nul": null, "t": "true",
        "jsonstr": "{\"a\": 1}", "zp": "007", "nanstr": "NaN",
        "lst": [1, 2], "d2": {"ok": true, "none": null}, "sl": ["a", "b"],
        "one": 1.0, "big": 18446744073709551615u64, "neg": -5
    })
}

fn ctx(value: Json) -> Context {
    match value {
        Json::Object(map) => map,
        _ => Context::new(),
    }
}

fn scope() -> Scope {
    Scope::new(&ctx(
        json!({"items": [1, 2, 3], "keys": "k", "a": {"b": {"c": 7}}, "name": "Ada"}),
    ))
    .with_input(&reference_input())
}

/// Renders `src` as a run-time string (same rules as static slots).
fn r(src: &str) -> Json {
    r_in(src, &scope())
}

fn r_in(src: &str, scope: &Scope) -> Json {
    match render_dynamic(&Json::String(src.to_owned()), scope) {
        Ok(value) => value,
        Err(err) => panic!("{src:?} failed: {err}"),
    }
}

fn err(src: &str) -> TemplateError {
    match render_dynamic(&Json::String(src.to_owned()), &scope()) {
        Ok(value) => panic!("{src:?} rendered {value} instead of failing"),
        Err(err) => err,
    }
}

// --- Rule 1 / SEMANTICS 1, 3: a single expression keeps its type ---------------------------

#[test]
fn single_expression_keeps_type() {
    assert_eq!(r("{{ input.n }}"), json!(1000));
    assert_eq!(r("{{ input.s }}"), json!("1000"));
    assert_eq!(r("{{ input.f }}"), json!(1.5));
    assert_eq!(r("{{ input.b }}"), json!(true));
    assert_eq!(r("{{ input.nul }}"), json!(null));
    assert_eq!(r("{{ input.t }}"), json!("true"));
    assert_eq!(r("{{ input.jsonstr }}"), json!("{\"a\": 1}"));
    assert_eq!(r("{{ input.zp }}"), json!("007"));
    assert_eq!(r("{{ input.nanstr }}"), json!("NaN"));
    assert_eq!(r("{{ input.neg }}"), json!(-5));
}

#[test]
fn numbers_keep_exact_kind() {
    let one = r("{{ input.one }}");
    assert!(one.as_f64() == Some(1.0) && one.is_f64(), "{one:?}");
    assert!(r("{{ input.n }}").is_i64());
    assert_eq!(r("{{ input.big }}"), json!(18446744073709551615u64));
    assert_eq!(r("{{ input.n + 1 }}"), json!(1001));
    assert!(r("{{ input.n + 1 }}").is_i64());
    assert_eq!(r("{{ input.f * 2 }}"), json!(3.0));
    assert!(r("{{ input.f * 2 }}").is_f64());
}

#[test]
fn single_expression_structures() {
    assert_eq!(r("{{ input.lst }}"), json!([1, 2]));
    assert_eq!(r("{{ input.d2 }}"), json!({"ok": true, "none": null}));
    assert_eq!(
        r("{{ [input.n, input.b, none] }}"),
        json!([1000, true, null])
    );
    assert_eq!(
        r("{{ {'a': input.n, 'b': input.sl} }}"),
        json!({"a": 1000, "b": ["a", "b"]})
    );
    assert_eq!(r("{{ input }}"), reference_input());
    assert_eq!(r("{{ context.a }}"), json!({"b": {"c": 7}}));
    assert_eq!(r("{{ context.a.b.c }}"), json!(7));
    assert_eq!(r("{{ range(3) }}"), json!([0, 1, 2]));
}

#[test]
fn whole_context_and_map_operations() {
    let s = scope();
    assert_eq!(
        r_in("{{ context }}", &s),
        json!({"items": [1, 2, 3], "keys": "k", "a": {"b": {"c": 7}}, "name": "Ada"})
    );
    assert_eq!(r_in("{{ context | length }}", &s), json!(4));
    assert_eq!(
        r_in("{% for k in context %}{{ k }},{% endfor %}", &s),
        json!("items,keys,a,name,")
    );
    assert_eq!(
        r_in(
            "{% for k, v in input.d2 | items %}{{ k }}={{ v }};{% endfor %}",
            &s
        ),
        json!("ok=True;none=None;")
    );
    assert_eq!(r_in("{{ 'name' in context }}", &s), json!(true));
    assert_eq!(r_in("{{ context.items | sum }}", &s), json!(6));
    assert_eq!(r_in("{{ context.items[1] }}", &s), json!(2));
    assert_eq!(r_in("{{ context.name | upper }}", &s), json!("ADA"));
}

#[test]
fn whitespace_around_single_expression() {
    assert_eq!(r("  {{ input.n }}  "), json!(1000));
    assert_eq!(r("\n{{ input.s }}\n"), json!("1000"));
    assert_eq!(r("{{- input.b -}}"), json!(true));
    assert_eq!(r("{# note #}{{ input.s }}"), json!("1000"));
}

#[test]
fn quoted_single_expression_is_text_then_json() {
    // Rendered text `"1000"` is a JSON string.
    assert_eq!(r("\"{{ input.n }}\""), json!("1000"));
}

#[test]
fn braces_inside_expression_strings() {
    assert_eq!(r("{{ input.missing | default('}}') }}"), json!("}}"));
    assert_eq!(r("{{ 'a' ~ '}}' ~ input.s }}"), json!("a}}1000"));
}

// --- Rule 1 / SEMANTICS 7: undefined values -----------------------------------------------

#[test]
fn missing_field_is_null() {
    assert_eq!(r("{{ input.missing }}"), json!(null));
    assert_eq!(r("{{ context.nope }}"), json!(null));
    assert_eq!(r("{{ nothing }}"), json!(null));
    // Absent variables are undefined too.
    assert_eq!(r("{{ output }}"), json!(null));
    // In text, undefined prints as nothing.
    assert_eq!(r("x{{ context.nope }}y"), json!("xy"));
}

#[test]
fn attribute_of_missing_value_is_error() {
    let e = err("{{ context.nope.deeper }}");
    assert_eq!(e.template, "{{ context.nope.deeper }}");
    assert!(e.message.contains("undefined"), "{}", e.message);
    assert_eq!(e.line, Some(1));
    let e = err("x {{ context.nope.deeper }}");
    assert!(e.message.contains("undefined"), "{}", e.message);
    // Attribute of an absent variable.
    let e = err("{{ output.score }}");
    assert!(e.message.contains("undefined"), "{}", e.message);
}

#[test]
fn error_lines_and_display() {
    let e = err("line one\n{{ context.nope.deeper }}");
    assert_eq!(e.line, Some(2));
    let e = err("\n\n  {{ context.nope.deeper }}");
    assert_eq!(e.line, Some(3));
    let shown = e.to_string();
    assert!(
        shown.contains("line 3") && shown.contains("context.nope.deeper"),
        "{shown}"
    );

    let state: StateError = e.into();
    assert_eq!(state.error_type, error_type::TEMPLATE);
    assert!(state.message.contains("undefined"), "{}", state.message);

    // Long templates are shortened in the message (and never split a character).
    let long = format!("{}{{{{ context.nope.deeper }}}}", "é".repeat(300));
    let shown = err(&long).to_string();
    assert!(shown.ends_with("..."), "{shown}");
}

#[test]
fn syntax_errors() {
    let e = err("{{ input.n ");
    assert!(e.message.contains("syntax error"), "{}", e.message);
    let e = err("ok\n{% if %}");
    assert_eq!(e.line, Some(2));
    assert!(
        err("{{ input.n | nosuchfilter }}")
            .message
            .contains("nosuchfilter")
    );
}

// --- Rule 2 / SEMANTICS 2, 23: mixed text -------------------------------------------------

#[test]
fn lists_and_maps_in_text_are_json() {
    assert_eq!(r("x{{ input.sl }}"), json!("x[\"a\", \"b\"]"));
    assert_eq!(
        r("x{{ input.d2 }}"),
        json!("x{\"ok\": true, \"none\": null}")
    );
    assert_eq!(r("x{{ context.a }}"), json!("x{\"b\": {\"c\": 7}}"));
    assert_eq!(r("x{{ [] }}{{ {} }}"), json!("x[]{}"));
    // Non-ASCII stays as is.
    let s = Scope::new(&Context::new()).with_input(&json!({"l": ["é"]}));
    assert_eq!(r_in("x{{ input.l }}", &s), json!("x[\"é\"]"));
}

#[test]
fn scalars_in_text_render_like_jinja() {
    assert_eq!(r("x{{ input.b }}"), json!("xTrue"));
    assert_eq!(r("x{{ input.nul }}"), json!("xNone"));
    assert_eq!(r("x{{ input.f }}"), json!("x1.5"));
    assert_eq!(r("x{{ input.one }}"), json!("x1.0"));
    assert_eq!(r("Hello {{ context.name }}!"), json!("Hello Ada!"));
}

#[test]
fn text_is_parsed_as_json_when_possible() {
    assert_eq!(r("[{{ input.n }}, {{ input.f }}]"), json!([1000, 1.5]));
    assert_eq!(r("{{ input.n }}{{ input.n }}"), json!(10001000));
    assert_eq!(r("{{ input.s }}{{ '' }}"), json!(1000));
    assert_eq!(r("{{ input.n }} x"), json!("1000 x"));
    assert_eq!(r("{% if input.b %}yes{% endif %}"), json!("yes"));
    assert_eq!(r("{% if input.b %}12{% else %}0{% endif %}"), json!(12));
    assert_eq!(r("{\"k\": {{ input.sl }}}"), json!({"k": ["a", "b"]}));
    assert_eq!(r("{{ input.zp }}{{ '' }}"), json!("007"));
    // Python renders True/None, which are not JSON: they stay text.
    assert_eq!(r("[{{ input.b }}, {{ input.nul }}]"), json!("[True, None]"));
    // An integer too large for 64 bits stays text rather than becoming a lossy float.
    assert_eq!(
        r("{{ '123456789012345678901234567890' }} "),
        json!("123456789012345678901234567890")
    );
    assert_eq!(
        r("{{ '12345678901234567890123' }}{{ '' }}"),
        json!("12345678901234567890123")
    );
    assert_eq!(r("{{ '1e3' }}{{ '' }}"), json!(1000.0));
}

#[test]
fn several_expressions_or_blocks_are_not_single() {
    let s = Scope::new(&Context::new()).with_input(&json!({"a": "x", "b": "y", "t": true}));
    assert_eq!(r_in("{{ input.a }}{{ input.b }}", &s), json!("xy"));
    assert_eq!(r_in("{{ input.a }} z", &s), json!("x z"));
    assert_eq!(
        r_in("{% if true %}{{ input.t }}{% endif %}", &s),
        json!("True")
    );
    assert_eq!(r_in("{% set v = input.t %}{{ v }}", &s), json!("True"));
}

// --- Rule 3 / SEMANTICS 4: bare paths -----------------------------------------------------

#[test]
fn bare_paths() {
    assert_eq!(r("input.lst"), json!([1, 2]));
    assert_eq!(r("input.n"), json!(1000));
    assert!(r("input.n").is_i64());
    assert!(r("input.one").is_f64());
    assert_eq!(r("input.s"), json!("1000"));
    assert_eq!(r(" input.b "), json!(true));
    assert_eq!(r("context.a.b.c"), json!(7));
    assert_eq!(r("context.items"), json!([1, 2, 3]));
    assert_eq!(r("input.missing"), json!(null));
    assert_eq!(r("input.n.deeper"), json!(null));
    assert_eq!(r("output.score"), json!(null));
    assert_eq!(r("input"), json!("input"));
    assert_eq!(r("output"), json!("output"));
    assert_eq!(r("item.id"), json!("item.id"));
    assert_eq!(r("input.1x"), json!("input.1x"));
    assert_eq!(r("input."), json!("input."));
    assert_eq!(r("input.a b"), json!("input.a b"));

    let s = Scope::new(&Context::new()).with_output(&json!({"score": 0.5, "tags": ["x"]}));
    assert_eq!(r_in("output.score", &s), json!(0.5));
    assert_eq!(r_in("output.tags", &s), json!(["x"]));
}

#[test]
fn literal_text() {
    assert_eq!(r(""), json!(""));
    assert_eq!(r("plain text"), json!("plain text"));
    // Literal text is never JSON-parsed.
    assert_eq!(r("[1, 2]"), json!("[1, 2]"));
    assert_eq!(r("42"), json!("42"));
    // `{#` alone does not make a template (as in the reference).
    assert_eq!(r("issue {#42"), json!("issue {#42"));
    assert_eq!(r("a } b { c"), json!("a } b { c"));
}

// --- Rule 4 / SEMANTICS 5: every depth ----------------------------------------------------

static N: TemplateSlot = TemplateSlot::new("{{ input.n }}");
static N2: TemplateSlot = TemplateSlot::new("{{ input.n }}");
static LIT: TemplateSlot = TemplateSlot::new("hello");
static NESTED: TemplateValue = TemplateValue::Map(&[
    ("a", TemplateValue::Str(&N)),
    (
        "b",
        TemplateValue::List(&[
            TemplateValue::Str(&N),
            TemplateValue::Int(7),
            TemplateValue::Map(&[("c", TemplateValue::Str(&N2))]),
            TemplateValue::List(&[TemplateValue::Str(&LIT)]),
        ]),
    ),
    ("lit_int", TemplateValue::Int(5)),
    ("f", TemplateValue::Float(2.0)),
    ("t", TemplateValue::Bool(false)),
    ("z", TemplateValue::Null),
    ("nan", TemplateValue::Float(f64::NAN)),
]);
/// Slots declared inline with a block, as a code generator can (`&TemplateSlot::new(..)`
/// directly is rejected: E0492, a slot has interior mutability so it must be a `static`).
static INLINE: TemplateValue = TemplateValue::List(&[
    TemplateValue::Str({
        static S: TemplateSlot = TemplateSlot::new("{{ input.s }}");
        &S
    }),
    TemplateValue::Str({
        static S: TemplateSlot = TemplateSlot::new("input.lst");
        &S
    }),
]);

#[test]
fn renders_at_every_depth() {
    let out = render(&NESTED, &scope()).unwrap();
    assert_eq!(
        out,
        json!({"a": 1000, "b": [1000, 7, {"c": 1000}, ["hello"]], "lit_int": 5, "f": 2.0,
               "t": false, "z": null, "nan": null})
    );
    // Map order is the source order.
    let keys: Vec<_> = out.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["a", "b", "lit_int", "f", "t", "z", "nan"]);
    assert_eq!(render(&INLINE, &scope()).unwrap(), json!(["1000", [1, 2]]));
}

#[test]
fn render_dynamic_every_depth() {
    let config = json!({
        "a": "{{ input.n }}",
        "b": ["{{ input.n }}", 7, {"c": "{{ input.n }}", "d": [["input.lst"]]}],
        "lit": "text", "n": 5, "x": null, "y": false
    });
    assert_eq!(
        render_dynamic(&config, &scope()).unwrap(),
        json!({"a": 1000, "b": [1000, 7, {"c": 1000, "d": [[[1, 2]]]}], "lit": "text", "n": 5,
               "x": null, "y": false})
    );
    assert!(render_dynamic(&json!({"a": ["{{ context.x.y }}"]}), &scope()).is_err());
}

// --- Rule 5 / SEMANTICS 6: items and keys are fields ---------------------------------------

#[test]
fn items_and_keys_are_fields() {
    assert_eq!(r("{{ context.items }}"), json!([1, 2, 3]));
    assert_eq!(r("{{ context.keys }}"), json!("k"));
    assert_eq!(r("{{ context['items'] }}"), json!([1, 2, 3]));
    assert_eq!(r("context.items"), json!([1, 2, 3]));
    assert_eq!(
        r("{% for i in context.items %}{{ i }}{% endfor %}"),
        json!(123)
    );
}

// --- Rule 6: fromjson / tojson ------------------------------------------------------------

#[test]
fn fromjson_and_tojson() {
    assert_eq!(r("{{ input.jsonstr | fromjson }}"), json!({"a": 1}));
    assert_eq!(r("{{ (input.jsonstr | fromjson).a }}"), json!(1));
    assert_eq!(
        r("{{ '[1, 2.5, \"x\"]' | fromjson }}"),
        json!([1, 2.5, "x"])
    );
    let s = Scope::new(&Context::new()).with_input(&json!({"js": "[1, 2]"}));
    assert_eq!(
        r_in(
            "{% for x in input.js | fromjson %}<{{ x }}>{% endfor %}",
            &s
        ),
        json!("<1><2>")
    );
    // Values that are already structured pass through.
    assert_eq!(r("{{ input.lst | fromjson }}"), json!([1, 2]));
    let e = err("{{ input.zp | fromjson }}");
    assert!(e.message.contains("fromjson"), "{}", e.message);

    // A single `{{ x | tojson }}` gives x back (the corpus passes lists to agents this way);
    // inside text it is JSON text.
    assert_eq!(
        r("{{ input.d2 | tojson }}"),
        json!({"ok": true, "none": null})
    );
    assert_eq!(r("{{ input.sl | tojson }}"), json!(["a", "b"]));
    assert_eq!(r(" {{ input.s | tojson }} "), json!("1000"));
    assert_eq!(r("{{ input.lst | tojson(indent=2) }}"), json!([1, 2]));
    assert_eq!(r("x{{ input.lst | tojson }}"), json!("x[1, 2]"));
    // Only when tojson is the last operation: `| length` after it is a number of characters.
    assert_eq!(r("{{ input.lst | tojson | length }}"), json!(6));
    assert!(r("{{ input.d2 | string }}").is_string());
}

// --- Rule 7: variables in scope -----------------------------------------------------------

#[test]
fn foreach_item_and_output() {
    let base = Scope::new(&ctx(json!({"k": "from ctx"})));
    let a = base.clone().with_item("item", &json!({"id": 3}));
    assert_eq!(r_in("{{ item.id }}", &a), json!(3));
    assert_eq!(
        r_in("{{ item.id }}-{{ context.k }}", &a),
        json!("3-from ctx")
    );
    let b = base.clone().with_item("doc", &json!("text"));
    assert_eq!(r_in("{{ doc }}", &b), json!("text"));
    assert_eq!(r_in("{{ item }}", &b), json!(null));
    let c = base
        .with_output(&json!({"score": 9}))
        .with_input(&json!([1]));
    assert_eq!(r_in("{{ output.score }}", &c), json!(9));
    assert_eq!(r_in("{{ input }}", &c), json!([1]));
    assert_eq!(r_in("{{ input[0] }}", &c), json!(1));
    // Scalar and list items.
    let d = Scope::new(&Context::new()).with_item("item", &json!([{"x": 1}]));
    assert_eq!(r_in("{{ item[0].x }}", &d), json!(1));
}

#[test]
fn item_shadows_same_name_in_templates() {
    let s = Scope::new(&ctx(json!({"a": 1}))).with_item("context", &json!({"a": 2}));
    assert_eq!(r_in("{{ context.a }}", &s), json!(2));
}

#[test]
fn lazy_fields_are_cached_and_consistent() {
    let s = scope();
    for _ in 0..3 {
        assert_eq!(r_in("{{ context.a.b }}", &s), json!({"c": 7}));
        assert_eq!(r_in("{{ context.items | length }}", &s), json!(3));
    }
}

// --- Slots --------------------------------------------------------------------------------

#[test]
fn slot_is_compiled_once() {
    static ONCE: TemplateSlot = TemplateSlot::new("{{ input.n * 2 }}");
    assert_eq!(ONCE.source(), "{{ input.n * 2 }}");
    assert!(!ONCE.is_compiled());
    let before = compiles();
    for _ in 0..5 {
        assert_eq!(render_slot(&ONCE, &scope()).unwrap(), json!(2000));
    }
    assert!(ONCE.is_compiled());
    assert_eq!(compiles() - before, 1);
}

#[test]
fn slot_prepare_reports_syntax_errors() {
    static BAD: TemplateSlot = TemplateSlot::new("{{ oops ");
    static GOOD: TemplateSlot = TemplateSlot::new("x {{ y }}");
    assert!(BAD.prepare().is_err());
    let e = render_slot(&BAD, &scope()).unwrap_err();
    assert_eq!(e.template, "{{ oops ");
    assert!(GOOD.prepare().is_ok());
    assert!(GOOD.is_compiled());
}

#[test]
fn slots_are_usable_across_threads() {
    static SHARED: TemplateSlot = TemplateSlot::new("{{ input.n }}-{{ input.s }}");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let s = Scope::new(&Context::new()).with_input(&json!({"n": 1, "s": "a"}));
                render_slot(&SHARED, &s).unwrap()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), json!("1-a"));
    }
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Scope>();
    assert_send_sync::<TemplateValue>();
    assert_send_sync::<TemplateError>();
}

#[test]
fn classification() {
    let env = environment();
    assert!(matches!(classify(env, "{{ a }}"), Compiled::Path { .. }));
    assert!(matches!(
        classify(env, "{{ input.item.id }}"),
        Compiled::Path { .. }
    ));
    assert!(matches!(
        classify(env, "{{ true }}"),
        Compiled::Single { .. }
    ));
    assert!(matches!(
        classify(env, "{{ a[0] }}"),
        Compiled::Single { .. }
    ));
    assert!(matches!(
        classify(env, "x {{ a.b }} y {{ c }}"),
        Compiled::PathText { .. }
    ));
    assert!(matches!(classify(env, "x {{ a.b }}\n"), Compiled::Text(_)));
    assert!(matches!(classify(env, "x {{- a }}"), Compiled::Text(_)));
    assert!(matches!(
        classify(env, " {{ a | b(1) }}\n"),
        Compiled::Single { .. }
    ));
    assert!(matches!(
        classify(env, "{{ a }}{{ b }}"),
        Compiled::PathText { .. }
    ));
    assert!(matches!(
        classify(env, "{{ a }} x"),
        Compiled::PathText { .. }
    ));
    assert!(matches!(classify(env, "{{ a + 1 }} x"), Compiled::Text(_)));
    assert!(matches!(
        classify(env, "{% if a %}{{ a }}{% endif %}"),
        Compiled::Text(_)
    ));
    assert!(matches!(
        classify(env, "{% set a = 1 %}{{ a }}"),
        Compiled::Text(_)
    ));
    assert!(matches!(
        classify(env, "context.x"),
        Compiled::BarePath("context.x")
    ));
    assert!(matches!(classify(env, "context"), Compiled::Literal));
    assert!(matches!(classify(env, "{{ a"), Compiled::Invalid(_)));
    assert!(is_bare_path("output.a_1._b"));
    assert!(!is_bare_path("output.a-b"));
    assert!(!is_bare_path("outputs.a"));
    assert!(!is_bare_path("output..a"));
}

#[test]
fn fast_paths_agree_with_minijinja() {
    let env = environment();
    let context = ctx(json!({
        "s": "text", "i": 7, "neg": -3, "u": 18446744073709551615u64, "f": 1.5, "f1": 2.0,
        "b": true, "n": null, "l": [1, "a", {"x": 1}], "uni": "é ☃",
        "o": {"a": {"b": "deep"}, "e": {}}
    }));
    let item = json!({"id": 3, "name": "it"});
    let output = json!({"x": 1, "list": [1, 2]});
    let scope = ScopeRef::for_state(&context)
        .with_output(&output)
        .with_item("item", &item);
    let plain_item = json!(5);
    let shadow = ScopeRef::new(&context).with_item("context", &plain_item);
    let sources = [
        "{{ context.s }}",
        "{{ context.i }}",
        "{{ context.u }}",
        "{{ context.f }}",
        "{{ context.l }}",
        "{{ context.o }}",
        "{{ context }}",
        "{{ input.o.a.b }}",
        "{{ context.missing }}",
        "{{ context.missing.deeper }}",
        "{{ context.s.x }}",
        "{{ context.l.x }}",
        "{{ context.n.x }}",
        "{{ item }}",
        "{{ item.id }}",
        "{{ output }}",
        "{{ output.list }}",
        "{{ nope }}",
        "{{ nope.x }}",
        "a {{ context.s }} b {{ context.i }}",
        "{{ context.neg }} {{ context.u }}",
        "{{ context.f }} x",
        "{{ context.f1 }} x",
        "{{ context.b }}!",
        "{{ context.n }}-",
        "{{ context.missing }}.",
        "{{ context.l }} z",
        "{{ context.o.e }} z",
        "{{ context.uni }} {{ item.name }}",
        "{{ context.i }}{{ context.i }}",
        "\"{{ context.s }}\"",
    ];
    for (scope, name) in [(&scope, "state"), (&shadow, "shadowed")] {
        for src in sources {
            let compiled = classify(env, src);
            let fast = eval(&compiled, src, scope);
            let slow = match &compiled {
                Compiled::Path {
                    expr, line_offset, ..
                } => eval_expression(expr, src, *line_offset, scope),
                Compiled::PathText { tmpl, .. } => tmpl
                    .render(scope.root_value())
                    .map(parse_rendered)
                    .map_err(|e| mj_error(src, &e, 0)),
                other => eval(other, src, scope),
            };
            assert_eq!(fast, slow, "{src} ({name} scope)");
        }
    }
}

/// Slots skip minijinja for `{{ plain.path }}` (`fast_path`): same values and errors as the
/// minijinja classification, found or not (a missing field, a list, a string on the way).
#[test]
fn fast_path_matches_minijinja() {
    let env = environment();
    let scope = scope();
    let scope = scope.as_ref();
    for src in [
        "{{ context.name }}",
        "{{context.a.b.c}}",
        "{{  context.a.b  }}",
        "{{ context.missing }}",
        "{{ context.missing.x }}",
        "{{ context.items }}",
        "{{ context.items.x }}",
        "{{ context.name.x }}",
        "{{ context.a.b.c.d }}",
        "{{ input.n }}",
        "{{ input }}",
        "{{ nothing }}",
        "{{ loop }}",
        "{{ context }}",
    ] {
        let fast = fast_path(src).unwrap_or_else(|| panic!("{src:?}: no fast path"));
        let fast = eval(&fast, src, &scope).map_err(|e| e.to_string());
        let slow = eval(&classify(env, src), src, &scope).map_err(|e| e.to_string());
        assert_eq!(fast, slow, "{src:?}");
    }
    for src in [
        " {{ a }}",
        "{{ a }} ",
        "{{ a }}\n",
        "{{\ta }}",
        "{{- a }}",
        "{{ a -}}",
        "{{ a + 1 }}",
        "{{ a[0] }}",
        "{{ not.a }}",
        "{{ true }}",
        "{{ a.0 }}",
        "{{ a }}{{ b }}",
        "{{ }}",
        "{{ a. }}",
    ] {
        assert!(fast_path(src).is_none(), "{src:?}");
    }
}
