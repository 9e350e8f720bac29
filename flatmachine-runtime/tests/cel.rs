//! CEL conditions, table-driven: each case in `fixtures/cel_cases.json` is
//! `[name, condition, context, expected]`, where `expected` is `true`, `false`,
//! `{"error": "<substring of the run-time error>"}` or `{"compile_error": "<substring>"}`.
//!
//! Each valid condition is checked by the compiler (`flatmachine_build::expr::cel::check`), then
//! evaluated twice: with the whole context converted, and with only the fields the compiler says
//! it reads. Both must give the expected result.

use flatmachine_build::expr::cel::check;
use flatmachine_runtime::cel::CelProgram;
use flatmachine_runtime::{Context, Value};

const CASES: &str = include_str!("fixtures/cel_cases.json");

fn leak_str(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

fn leak_fields(fields: Vec<String>) -> &'static [&'static str] {
    let v: Vec<&'static str> = fields.iter().map(|f| leak_str(f)).collect();
    Box::leak(v.into_boxed_slice())
}

fn run(program: &CelProgram, context: &Context) -> Result<bool, String> {
    program.eval(context).map_err(|e| e.message().to_string())
}

/// Checks one case; returns a description of the mismatch, if any.
fn check_case(case: &Value) -> Option<String> {
    let [name, src, context, expected] = case.as_array()?.as_slice() else {
        return Some(format!("malformed case {case}"));
    };
    let (name, src) = (name.as_str()?, src.as_str()?);
    let context = context.as_object()?.clone();
    let checked = check(src);
    if let Some(want) = expected.get("compile_error").and_then(Value::as_str) {
        return match checked {
            Err(e) if e.message.contains(want) => None,
            other => Some(format!(
                "{name}: `{src}` expected compile error `{want}`, got {other:?}"
            )),
        };
    }
    let fields = match checked {
        Ok(c) => c.fields,
        Err(e) => return Some(format!("{name}: `{src}` does not compile: {e}")),
    };
    let src = leak_str(src);
    let whole = CelProgram::new(src, None);
    let mut results = vec![("whole context", run(&whole, &context))];
    if let Some(fields) = fields {
        let some = CelProgram::new(src, Some(leak_fields(fields)));
        results.push(("fields read", run(&some, &context)));
    }
    for (how, got) in results {
        let ok = match (expected, &got) {
            (Value::Bool(want), Ok(b)) => want == b,
            (Value::Object(o), Err(message)) => {
                let want = o.get("error").and_then(Value::as_str).unwrap_or("");
                message.starts_with(&format!("in expression `{src}`: ")) && message.contains(want)
            }
            _ => false,
        };
        if !ok {
            return Some(format!(
                "{name}: `{src}` ({how}): expected {expected}, got {got:?}"
            ));
        }
    }
    None
}

#[test]
fn cel_cases() {
    let cases: Vec<Value> = serde_json::from_str(CASES).expect("cases are JSON");
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(check_case).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_context_is_converted_per_evaluation() {
    static P: CelProgram = CelProgram::new("context.n > 1", Some(&["n"]));
    let mut context = Context::new();
    context.insert("n".into(), Value::from(0));
    assert_eq!(P.eval(&context), Ok(false));
    context.insert("n".into(), Value::from(5));
    assert_eq!(P.eval(&context), Ok(true));
}

/// The compiler and the runtime keep their own lists of CEL names (the runtime does not
/// depend on the compiler): the type identifiers must be the same, and every function the
/// compiler lets a condition call must exist at run time. A function called with no arguments
/// fails with a complaint about its arguments; one the runtime lacks fails as undeclared.
#[test]
fn the_compiler_and_the_runtime_know_the_same_cel_names() {
    use flatmachine_build::expr::cel::{FUNCTIONS, TYPE_NAMES};
    assert_eq!(flatmachine_runtime::cel::TYPE_NAMES, TYPE_NAMES);
    const MACROS: &[&str] = &["has", "all", "exists", "exists_one", "map", "filter"];
    let context = Context::new();
    let mut missing = Vec::new();
    for name in FUNCTIONS.iter().filter(|f| !MACROS.contains(f)) {
        let src = leak_str(&format!("{name}() == null"));
        match CelProgram::new(src, None).eval(&context) {
            Err(e) if e.message().to_lowercase().contains("undeclared") => {
                missing.push(format!("{name}: {}", e.message()))
            }
            _ => {}
        }
    }
    // The check above can fail: a name the runtime does not bind is reported as undeclared.
    let unknown = CelProgram::new("noSuchFunction() == null", None).eval(&context);
    assert!(
        unknown.is_err_and(|e| e.message().to_lowercase().contains("undeclared")),
        "an unknown function must be reported as undeclared"
    );
    assert!(
        missing.is_empty(),
        "functions the runtime lacks:\n{}",
        missing.join("\n")
    );
}

// -------------------------------------------------------------------------------------------
// Machines with `expression_engine: cel`, end to end
// -------------------------------------------------------------------------------------------

use flatmachine_runtime::{Machine, RunError, error_type};
use serde_json::json;

flatmachine_runtime::flatmachine!("tests/machines/cel_branch.yml");
flatmachine_runtime::flatmachine!("tests/machines/cel_error.yml");
flatmachine_runtime::flatmachine!("tests/machines/cel_error_unrouted.yml");

async fn route(ticket: Value) -> String {
    let machine = Machine::of::<cel_branch::Machine>().build().unwrap();
    let result = machine.run(json!({ "ticket": ticket })).await.unwrap();
    result.output["route"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn cel_conditions_pick_the_branch() {
    let high = json!({"items": [{"priority": "low"}, {"priority": "high"}], "score": 3});
    assert_eq!(route(high).await, "urgent");
    // High priority but a low score: `has(owner)` decides.
    let owned = json!({"items": [{"priority": "high"}], "score": 2.4, "owner": "team-a"});
    assert_eq!(route(owned).await, "team");
    let low = json!({"items": [{"priority": "low"}], "score": 1});
    assert_eq!(route(low).await, "later");
    let mixed =
        json!({"items": [{"priority": "low"}, {"priority": "mid"}], "score": 1, "owner": "bob"});
    assert_eq!(route(mixed).await, "other");
}

#[tokio::test]
async fn a_cel_error_routes_through_on_error() {
    let machine = Machine::of::<cel_error::Machine>().build().unwrap();
    // No `score`: a missing key.
    let result = machine.run(json!({"ticket": {}})).await.unwrap();
    assert_eq!(result.final_state, "handled");
    assert_eq!(result.output["error_type"], "ExpressionError");
    let message = result.output["error"].as_str().unwrap();
    assert!(
        message.starts_with("in expression `context.ticket.score > 5`: ")
            && message.contains("score"),
        "{message}"
    );
    // A string score: no `>` between string and int.
    let result = machine
        .run(json!({"ticket": {"score": "9"}}))
        .await
        .unwrap();
    assert_eq!(result.final_state, "handled");
    // A good score takes the normal branch.
    let result = machine.run(json!({"ticket": {"score": 9}})).await.unwrap();
    assert_eq!(result.final_state, "big");
}

#[tokio::test]
async fn an_unrouted_cel_error_fails_the_run() {
    let machine = Machine::of::<cel_error_unrouted::Machine>()
        .build()
        .unwrap();
    match machine.run(json!({"n": 1})).await.unwrap_err() {
        RunError::State { state, error, .. } => {
            assert_eq!(state, "start");
            assert_eq!(error.error_type, error_type::EXPRESSION);
            assert!(
                error
                    .message
                    .contains("must evaluate to a bool, this one gave int `2`"),
                "{}",
                error.message
            );
        }
        other => panic!("expected a state error, got {other:?}"),
    }
}
