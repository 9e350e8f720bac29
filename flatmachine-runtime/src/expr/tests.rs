//! Tests of the run-time expression helpers.

use super::*;
use serde_json::json;

fn ctx(value: Value) -> Context {
    match value {
        Value::Object(map) => map,
        _ => panic!("test context must be an object"),
    }
}

fn err_msg<T: fmt::Debug>(result: Result<T>) -> String {
    result.expect_err("expected an error").message().to_owned()
}

// ---- errors -------------------------------------------------------------------------

#[test]
fn expr_error_display_and_state_error() {
    let e = ExprError::new("boom");
    assert_eq!(e.to_string(), "boom");
    assert_eq!(e.message(), "boom");
    let s: StateError = e.clone().into();
    assert_eq!(s.error_type, error_type::EXPRESSION);
    assert_eq!(s.message, "boom");
    assert_eq!(
        e.in_expression("context.x > 1").message(),
        "in expression `context.x > 1`: boom"
    );
    let _: &dyn std::error::Error = &ExprError::new("x");
    assert_eq!(ok(true), Ok(true));
}

#[test]
fn expr_type_names() {
    assert_eq!(type_name(&json!(null)), "null");
    assert_eq!(type_name(&json!(true)), "boolean");
    assert_eq!(type_name(&json!(1)), "number");
    assert_eq!(type_name(&json!(1.5)), "number");
    assert_eq!(type_name(&json!("s")), "string");
    assert_eq!(type_name(&json!([])), "array");
    assert_eq!(type_name(&json!({})), "object");
}

// ---- literals and lookups -----------------------------------------------------------

#[test]
fn expr_literals() {
    assert_eq!(*null(), json!(null));
    assert_eq!(*boolean(true), json!(true));
    assert_eq!(*int(-3), json!(-3));
    assert_eq!(*float(1.5), json!(1.5));
    assert_eq!(*float(f64::INFINITY), json!(null));
    assert_eq!(*string("hi"), json!("hi"));
}

#[test]
fn expr_path_borrows_and_defaults_to_null() {
    let c = ctx(json!({"a": {"b": {"c": 3}}, "n": 1, "list": [1, 2]}));
    let v = path(&c, &["a", "b", "c"]);
    assert!(matches!(v, Cow::Borrowed(_)));
    assert_eq!(*v, json!(3));
    assert_eq!(*path(&c, &["a", "missing"]), json!(null));
    assert_eq!(*path(&c, &["missing", "deeper"]), json!(null));
    // Attribute of a non-object is null (getattr(value, name, None)).
    assert_eq!(*path(&c, &["n", "x"]), json!(null));
    assert_eq!(*path(&c, &["list", "x"]), json!(null));
    assert_eq!(*path(&c, &[]), json!(null));
}

#[test]
fn expr_whole_context() {
    let c = ctx(json!({"a": 1}));
    assert_eq!(*context(&c), json!({"a": 1}));
    assert!(!truthy(&context(&Context::new())));
}

#[test]
fn expr_field_on_borrowed_and_owned() {
    let v = json!({"a": {"b": 1}});
    let a = field(Cow::Borrowed(&v), "a");
    assert!(matches!(a, Cow::Borrowed(_)));
    assert_eq!(*field(a, "b"), json!(1));
    assert_eq!(*field(Cow::Owned(json!({"x": [1]})), "x"), json!([1]));
    assert_eq!(*field(Cow::Owned(json!({"x": 1})), "y"), json!(null));
    for base in [json!(null), json!(1), json!("s"), json!([1]), json!(true)] {
        assert_eq!(*field(Cow::Owned(base), "x"), json!(null));
    }
}

#[test]
fn expr_index_object() {
    let v = json!({"a": 1});
    assert_eq!(*index(Cow::Borrowed(&v), &json!("a")).unwrap(), json!(1));
    assert_eq!(
        *index(Cow::Owned(v.clone()), &json!("a")).unwrap(),
        json!(1)
    );
    assert_eq!(
        err_msg(index(Cow::Borrowed(&v), &json!("b"))),
        "key \"b\" not found in object"
    );
    assert_eq!(
        err_msg(index(Cow::Owned(v.clone()), &json!("b"))),
        "key \"b\" not found in object"
    );
    assert_eq!(
        err_msg(index(Cow::Borrowed(&v), &json!(1))),
        "cannot index object with number"
    );
}

#[test]
fn expr_index_context() {
    let c = ctx(json!({"a": [1, 2]}));
    assert_eq!(*context_index(&c, &json!("a")).unwrap(), json!([1, 2]));
    assert_eq!(
        err_msg(context_index(&c, &json!("zz"))),
        "key \"zz\" not found in object"
    );
    assert_eq!(
        err_msg(context_index(&c, &json!(0))),
        "cannot index object with number"
    );
}

#[test]
fn expr_index_array() {
    let v = json!([10, 20, 30]);
    let at = |i: Value| index(Cow::Borrowed(&v), &i);
    assert_eq!(*at(json!(0)).unwrap(), json!(10));
    assert_eq!(*at(json!(2)).unwrap(), json!(30));
    assert_eq!(*at(json!(-1)).unwrap(), json!(30));
    assert_eq!(*at(json!(-3)).unwrap(), json!(10));
    assert_eq!(err_msg(at(json!(3))), "index 3 out of range for length 3");
    assert_eq!(err_msg(at(json!(-4))), "index -4 out of range for length 3");
    assert_eq!(
        err_msg(at(json!(u64::MAX))),
        format!("index {} out of range for length 3", u64::MAX)
    );
    assert_eq!(err_msg(at(json!(1.0))), "index must be an integer, not 1.0");
    assert_eq!(err_msg(at(json!("0"))), "cannot index array with string");
    assert_eq!(err_msg(at(json!(true))), "cannot index array with boolean");
    assert_eq!(
        *index(Cow::Owned(v.clone()), &json!(-2)).unwrap(),
        json!(20)
    );
    assert_eq!(
        err_msg(index(Cow::Owned(json!([])), &json!(0))),
        "index 0 out of range for length 0"
    );
}

#[test]
fn expr_index_string_by_code_point() {
    let v = json!("héllo");
    assert_eq!(*index(Cow::Borrowed(&v), &json!(1)).unwrap(), json!("é"));
    assert_eq!(*index(Cow::Borrowed(&v), &json!(-1)).unwrap(), json!("o"));
    assert_eq!(
        err_msg(index(Cow::Borrowed(&v), &json!(5))),
        "index 5 out of range for length 5"
    );
    assert_eq!(
        err_msg(index(Cow::Borrowed(&v), &json!("a"))),
        "cannot index string with string"
    );
}

#[test]
fn expr_index_other_types() {
    for base in [json!(null), json!(1), json!(true)] {
        let name = type_name(&base);
        assert_eq!(
            err_msg(index(Cow::Owned(base), &json!(0))),
            format!("cannot index {name} with number")
        );
    }
}

// ---- truthiness ---------------------------------------------------------------------

#[test]
fn expr_truthiness() {
    for v in [
        json!(null),
        json!(false),
        json!(0),
        json!(0.0),
        json!(-0.0),
        json!(""),
        json!([]),
        json!({}),
    ] {
        assert!(!truthy(&v), "{v} should be falsy");
    }
    for v in [
        json!(true),
        json!(1),
        json!(-1),
        json!(u64::MAX),
        json!(0.1),
        json!("0"),
        json!(" "),
        json!([0]),
        json!({"a": null}),
    ] {
        assert!(truthy(&v), "{v} should be truthy");
    }
}

// ---- equality -----------------------------------------------------------------------

#[test]
fn expr_equality() {
    assert!(eq(&json!(1), &json!(1.0)));
    assert!(eq(&json!(1.0), &json!(1)));
    assert!(!eq(&json!(1), &json!(1.5)));
    assert!(eq(&json!(u64::MAX), &json!(u64::MAX)));
    assert!(!eq(&json!(u64::MAX), &json!(i64::MAX)));
    assert!(eq(&json!(-0.0), &json!(0)));
    assert!(eq(&json!(null), &json!(null)));
    assert!(eq(&json!("a"), &json!("a")));
    assert!(!eq(&json!("a"), &json!("A")));
    assert!(eq(&json!(true), &json!(true)));
    assert!(!eq(&json!(true), &json!(false)));
    // Numbers never equal booleans (Python: 1 == True).
    assert!(!eq(&json!(1), &json!(true)));
    assert!(!eq(&json!(0), &json!(false)));
    assert!(ne(&json!(0), &json!(false)));
    // Mixed types are simply unequal, never an error.
    assert!(!eq(&json!(null), &json!(0)));
    assert!(!eq(&json!("1"), &json!(1)));
    assert!(!eq(&json!([]), &json!({})));
    assert!(ne(&json!(null), &json!("")));
    // Containers compare elementwise with the same rules.
    assert!(eq(&json!([1, [2.0, "x"]]), &json!([1.0, [2, "x"]])));
    assert!(!eq(&json!([1, 2]), &json!([1, 2, 3])));
    assert!(!eq(&json!([1]), &json!([true])));
    assert!(eq(
        &json!({"a": 1, "b": [1]}),
        &json!({"b": [1.0], "a": 1.0})
    ));
    assert!(!eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    assert!(!eq(&json!({"a": 1}), &json!({"b": 1})));
    assert!(!eq(&json!({"a": 1}), &json!({"a": 2})));
}

#[test]
fn expr_large_integer_float_equality_is_exact() {
    // 2^53 + 1 is not representable as f64; Python compares exactly.
    let big = (1_i64 << 53) + 1;
    assert!(!eq(&json!(big), &json!((1_i64 << 53) as f64)));
    assert!(gt(&json!(big), &json!((1_i64 << 53) as f64)).unwrap());
    assert!(eq(&json!(1_i64 << 53), &json!((1_i64 << 53) as f64)));
    assert!(lt(&json!(u64::MAX), &json!(1e20)).unwrap());
    assert!(gt(&json!(i64::MIN), &json!(-1e20)).unwrap());
    assert!(lt(&json!(2), &json!(2.5)).unwrap());
    assert!(gt(&json!(3), &json!(2.5)).unwrap());
    assert!(gt(&json!(-2), &json!(-2.5)).unwrap());
    assert!(lt(&json!(-3), &json!(-2.5)).unwrap());
}

// ---- ordering -----------------------------------------------------------------------

#[test]
fn expr_ordering_numbers() {
    assert!(lt(&json!(1), &json!(2)).unwrap());
    assert!(!lt(&json!(2), &json!(2)).unwrap());
    assert!(le(&json!(2), &json!(2.0)).unwrap());
    assert!(gt(&json!(2.5), &json!(2)).unwrap());
    assert!(ge(&json!(2), &json!(2)).unwrap());
    assert!(!ge(&json!(1), &json!(2)).unwrap());
    assert!(lt(&json!(-1), &json!(u64::MAX)).unwrap());
}

#[test]
fn expr_ordering_strings_bools_arrays() {
    assert!(lt(&json!("abc"), &json!("abd")).unwrap());
    assert!(lt(&json!("ab"), &json!("abc")).unwrap());
    assert!(lt(&json!("Z"), &json!("a")).unwrap());
    assert!(lt(&json!("z"), &json!("é")).unwrap());
    assert!(lt(&json!("\u{ffff}"), &json!("\u{10000}")).unwrap());
    assert!(lt(&json!(false), &json!(true)).unwrap());
    assert!(ge(&json!(true), &json!(true)).unwrap());
    assert!(lt(&json!([1, 2]), &json!([1, 3])).unwrap());
    assert!(lt(&json!([1, 2]), &json!([1, 2, 0])).unwrap());
    assert!(le(&json!([1, 2]), &json!([1.0, 2.0])).unwrap());
    assert!(gt(&json!([[1, "b"]]), &json!([[1, "a"]])).unwrap());
    assert!(lt(&json!([]), &json!([null])).unwrap());
    // Equal prefixes of unorderable elements are fine (== decides them).
    assert!(lt(&json!([null, 1]), &json!([null, 2])).unwrap());
    assert!(lt(&json!([{"a": 1}]), &json!([{"a": 1}, 0])).unwrap());
}

#[test]
fn expr_ordering_errors() {
    assert_eq!(
        err_msg(ge(&json!(null), &json!(8))),
        "'>=' not supported between null and number"
    );
    assert_eq!(
        err_msg(lt(&json!("1"), &json!(1))),
        "'<' not supported between string and number"
    );
    assert_eq!(
        err_msg(gt(&json!(true), &json!(0))),
        "'>' not supported between boolean and number"
    );
    assert_eq!(
        err_msg(le(&json!({}), &json!({}))),
        "'<=' not supported between object and object"
    );
    assert_eq!(
        err_msg(lt(&json!(null), &json!(null))),
        "'<' not supported between null and null"
    );
    // The first differing array elements must be orderable.
    assert_eq!(
        err_msg(lt(&json!([1, "a"]), &json!([1, 2]))),
        "'<' not supported between string and number"
    );
    assert_eq!(
        err_msg(compare("<", &json!([1]), &json!("a"))),
        "'<' not supported between array and string"
    );
}

// ---- arithmetic ---------------------------------------------------------------------

#[test]
fn expr_add() {
    assert_eq!(*add(&json!(1), &json!(2)).unwrap(), json!(3));
    assert!(add(&json!(1), &json!(2)).unwrap().as_i64().is_some());
    assert_eq!(*add(&json!(1), &json!(0.5)).unwrap(), json!(1.5));
    assert_eq!(*add(&json!(0.5), &json!(1)).unwrap(), json!(1.5));
    assert!(add(&json!(1), &json!(1.0)).unwrap().is_f64());
    assert_eq!(*add(&json!("ab"), &json!("cd")).unwrap(), json!("abcd"));
    assert_eq!(*add(&json!([1]), &json!([2, 3])).unwrap(), json!([1, 2, 3]));
    assert_eq!(
        *add(&json!(i64::MAX), &json!(1)).unwrap(),
        json!(9_223_372_036_854_775_808_u64)
    );
    assert_eq!(
        err_msg(add(&json!(u64::MAX), &json!(1))),
        "integer overflow in '+'"
    );
    assert_eq!(
        err_msg(add(&json!(1e308), &json!(1e308))),
        "result of '+' is not a finite number"
    );
    assert_eq!(
        err_msg(add(&json!("a"), &json!(1))),
        "'+' not supported between string and number"
    );
    assert_eq!(
        err_msg(add(&json!(true), &json!(1))),
        "'+' not supported between boolean and number"
    );
    assert_eq!(
        err_msg(add(&json!(null), &json!(1))),
        "'+' not supported between null and number"
    );
    assert_eq!(
        err_msg(add(&json!({}), &json!({}))),
        "'+' not supported between object and object"
    );
}

#[test]
fn expr_sub() {
    assert_eq!(*sub(&json!(1), &json!(3)).unwrap(), json!(-2));
    assert_eq!(*sub(&json!(1.5), &json!(1)).unwrap(), json!(0.5));
    assert_eq!(
        err_msg(sub(&json!(i64::MIN), &json!(1))),
        "integer overflow in '-'"
    );
    assert_eq!(
        err_msg(sub(&json!("a"), &json!("a"))),
        "'-' not supported between string and string"
    );
    assert_eq!(
        err_msg(sub(&json!([1]), &json!([1]))),
        "'-' not supported between array and array"
    );
}

#[test]
fn expr_mul() {
    assert_eq!(*mul(&json!(6), &json!(7)).unwrap(), json!(42));
    assert_eq!(*mul(&json!(2), &json!(0.25)).unwrap(), json!(0.5));
    assert_eq!(
        err_msg(mul(&json!(i64::MAX), &json!(i64::MAX))),
        "integer overflow in '*'"
    );
    assert_eq!(
        err_msg(mul(&json!(u64::MAX), &json!(u64::MAX))),
        "integer overflow in '*'"
    );
    assert_eq!(*mul(&json!("ab"), &json!(3)).unwrap(), json!("ababab"));
    assert_eq!(*mul(&json!(2), &json!("ab")).unwrap(), json!("abab"));
    assert_eq!(*mul(&json!("ab"), &json!(0)).unwrap(), json!(""));
    assert_eq!(*mul(&json!("ab"), &json!(-2)).unwrap(), json!(""));
    assert_eq!(
        *mul(&json!([1, 2]), &json!(2)).unwrap(),
        json!([1, 2, 1, 2])
    );
    assert_eq!(*mul(&json!(2), &json!([0])).unwrap(), json!([0, 0]));
    assert_eq!(*mul(&json!([1]), &json!(-1)).unwrap(), json!([]));
    assert_eq!(*mul(&json!([]), &json!(u64::MAX)).unwrap(), json!([]));
    assert_eq!(
        err_msg(mul(&json!("ab"), &json!(1.5))),
        "'*' not supported between string and number (the count must be an integer)"
    );
    assert_eq!(
        err_msg(mul(&json!([1]), &json!(2.0))),
        "'*' not supported between array and number (the count must be an integer)"
    );
    assert_eq!(
        err_msg(mul(&json!("a"), &json!(i64::MAX))),
        format!("repetition result is too long (the limit is {MAX_REPEAT_LEN})")
    );
    assert_eq!(
        err_msg(mul(&json!("a"), &json!("b"))),
        "'*' not supported between string and string"
    );
    assert_eq!(
        err_msg(mul(&json!(true), &json!(2))),
        "'*' not supported between boolean and number"
    );
}

#[test]
fn expr_div() {
    let q = div(&json!(7), &json!(2)).unwrap();
    assert_eq!(*q, json!(3.5));
    let q = div(&json!(4), &json!(2)).unwrap();
    assert!(q.is_f64(), "true division always gives a float");
    assert!(eq(&q, &json!(2)));
    assert_eq!(*div(&json!(1.0), &json!(4)).unwrap(), json!(0.25));
    assert_eq!(err_msg(div(&json!(1), &json!(0))), "division by zero");
    assert_eq!(err_msg(div(&json!(1), &json!(0.0))), "division by zero");
    assert_eq!(err_msg(div(&json!(0), &json!(-0.0))), "division by zero");
    assert_eq!(
        err_msg(div(&json!(1e308), &json!(1e-308))),
        "result of '/' is not a finite number"
    );
    assert_eq!(
        err_msg(div(&json!("a"), &json!(1))),
        "'/' not supported between string and number"
    );
}

#[test]
fn expr_neg() {
    assert_eq!(*neg(&json!(5)).unwrap(), json!(-5));
    assert_eq!(*neg(&json!(-1.5)).unwrap(), json!(1.5));
    assert_eq!(
        *neg(&json!(i64::MIN)).unwrap(),
        json!(9_223_372_036_854_775_808_u64)
    );
    assert_eq!(
        *neg(&json!(9_223_372_036_854_775_808_u64)).unwrap(),
        json!(i64::MIN)
    );
    assert_eq!(err_msg(neg(&json!(u64::MAX))), "integer overflow in '-'");
    assert_eq!(
        err_msg(neg(&json!("a"))),
        "unary '-' not supported for string"
    );
    assert_eq!(
        err_msg(neg(&json!(true))),
        "unary '-' not supported for boolean"
    );
    assert_eq!(
        err_msg(neg(&json!(null))),
        "unary '-' not supported for null"
    );
}
