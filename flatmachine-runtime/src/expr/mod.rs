//! Run-time helpers for compiled conditions (the "simple" expression language).
//!
//! `flatmachine-build` compiles every `condition:` into a Rust expression that calls the
//! functions in this module. Values are carried as [`Val`] (a [`Cow`] of a JSON [`Value`]):
//! lookups into the context borrow, only computed values (arithmetic, literals) are owned.
//!
//! The semantics follow the Python reference (`flatmachines` `SimpleExpressionEngine`, which
//! evaluates Python `ast` nodes over JSON values), with a few deliberate differences documented
//! in `docs/expressions.md`:
//!
//! * a number never equals a boolean, and numbers and booleans do not order against each other;
//! * arithmetic and ordering between mismatched types is an [`ExprError`] (as in Python, where it
//!   raises `TypeError`), never a silent coercion;
//! * float results that are not finite (JSON cannot hold them) are an error.

use std::borrow::{Borrow, Cow};
use std::cmp::Ordering;
use std::fmt;

use serde_json::Number;

pub use crate::context::{Context, Value};
use crate::error::{StateError, error_type};

/// A value flowing through a compiled expression: borrowed from the context, or computed.
pub type Val<'a> = Cow<'a, Value>;

/// The result of a fallible expression step.
pub type Result<T, E = ExprError> = std::result::Result<T, E>;

/// Longest string (in bytes) or array (in elements) that `*` repetition may build.
pub const MAX_REPEAT_LEN: usize = 1 << 24;

static NULL: Value = Value::Null;

/// An error raised while evaluating an expression (type mismatch, missing key, bad index, ...).
///
/// Converts into a [`StateError`] of type [`error_type::EXPRESSION`], so it routes through the
/// state's `on_error` like any other state failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    message: String,
}

impl ExprError {
    /// A new error with the given message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error, prefixed with the expression source it came from.
    pub fn in_expression(self, source: &str) -> Self {
        Self {
            message: format!("in expression `{source}`: {}", self.message),
        }
    }

    fn with_detail(self, detail: &str) -> Self {
        Self::new(format!("{} ({detail})", self.message))
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExprError {}

impl From<ExprError> for StateError {
    fn from(error: ExprError) -> Self {
        StateError::new(error_type::EXPRESSION, error.message)
    }
}

/// The JSON type name of a value, as used in error messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn unsupported(op: &str, lhs: &Value, rhs: &Value) -> ExprError {
    ExprError::new(format!(
        "'{op}' not supported between {} and {}",
        type_name(lhs),
        type_name(rhs)
    ))
}

/// The result of a condition that cannot fail (no arithmetic, ordering or subscripts).
pub fn ok(value: bool) -> Result<bool> {
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// Literals and lookups
// ---------------------------------------------------------------------------------------------

/// The `null` literal.
pub fn null() -> Val<'static> {
    Cow::Borrowed(&NULL)
}

/// A boolean literal, or a boolean result used as a value.
pub fn boolean(value: bool) -> Val<'static> {
    Cow::Owned(Value::Bool(value))
}

/// An integer literal.
pub fn int(value: i64) -> Val<'static> {
    Cow::Owned(Value::from(value))
}

/// A float literal. The compiler only emits finite floats; a non-finite one becomes `null`.
pub fn float(value: f64) -> Val<'static> {
    Cow::Owned(Number::from_f64(value).map_or(Value::Null, Value::Number))
}

/// A string literal.
pub fn string(value: &str) -> Val<'static> {
    Cow::Owned(Value::String(value.to_owned()))
}

/// The whole context as a value (bare `context`). This copies the context; lookups such as
/// `context.a.b` use [`path`] instead, which borrows.
pub fn context(ctx: &Context) -> Val<'static> {
    Cow::Owned(Value::Object(ctx.clone()))
}

/// Maps with at most this many entries are searched in order rather than hashed.
const SCAN_MAX: usize = 8;

/// `map.get(key)`, comparing the keys of a small map in order instead of hashing `key`
/// (the map's SipHash costs more than a few string comparisons). Same result either way:
/// keys are unique.
#[inline]
fn lookup<'a>(map: &'a Context, key: &str) -> Option<&'a Value> {
    if map.len() <= SCAN_MAX {
        map.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    } else {
        map.get(key)
    }
}

/// `context.a.b.c`: follows attribute accesses from the context, borrowing the result.
///
/// Each step behaves like [`field`]: a missing field, or a field of a non-object, is `null`.
pub fn path<'a>(ctx: &'a Context, segments: &[&str]) -> Val<'a> {
    let Some((first, rest)) = segments.split_first() else {
        return null();
    };
    let mut value = lookup(ctx, first).unwrap_or(&NULL);
    for segment in rest {
        value = match value {
            Value::Object(map) => lookup(map, segment).unwrap_or(&NULL),
            _ => &NULL,
        };
    }
    Cow::Borrowed(value)
}

/// `base.name`: the field of an object, or `null` when the field is missing or `base` is not
/// an object (the reference uses `getattr(value, name, None)`).
pub fn field<'a>(base: Val<'a>, name: &str) -> Val<'a> {
    match base {
        Cow::Borrowed(Value::Object(map)) => Cow::Borrowed(lookup(map, name).unwrap_or(&NULL)),
        Cow::Owned(Value::Object(mut map)) => Cow::Owned(map.remove(name).unwrap_or(Value::Null)),
        _ => null(),
    }
}

/// `context[key]`: like [`index`] on the context object (a missing key is an error).
pub fn context_index<'a>(ctx: &'a Context, key: &impl Borrow<Value>) -> Result<Val<'a>> {
    match key.borrow() {
        Value::String(key) => lookup(ctx, key)
            .map(Cow::Borrowed)
            .ok_or_else(|| missing_key(key)),
        other => Err(ExprError::new(format!(
            "cannot index object with {}",
            type_name(other)
        ))),
    }
}

fn missing_key(key: &str) -> ExprError {
    ExprError::new(format!("key {key:?} not found in object"))
}

/// `base[index]`, with Python semantics:
///
/// * `object[string]`: the field; a missing key is an error (Python raises `KeyError`), unlike
///   `object.name`, which gives `null`;
/// * `array[integer]`: the element; negative indexes count from the end; out of range is an error;
/// * `string[integer]`: the one-character string at that (Unicode code point) index, likewise;
/// * anything else is an error.
pub fn index<'a>(base: Val<'a>, index: &impl Borrow<Value>) -> Result<Val<'a>> {
    match (base, index.borrow()) {
        (Cow::Borrowed(Value::Object(map)), Value::String(key)) => lookup(map, key)
            .map(Cow::Borrowed)
            .ok_or_else(|| missing_key(key)),
        (Cow::Owned(Value::Object(mut map)), Value::String(key)) => map
            .remove(key)
            .map(Cow::Owned)
            .ok_or_else(|| missing_key(key)),
        (Cow::Borrowed(Value::Array(items)), Value::Number(n)) => {
            let at = element_index(n, items.len())?;
            Ok(Cow::Borrowed(&items[at]))
        }
        (Cow::Owned(Value::Array(mut items)), Value::Number(n)) => {
            let at = element_index(n, items.len())?;
            Ok(Cow::Owned(items.swap_remove(at)))
        }
        (base, Value::Number(n)) if base.is_string() => {
            let text = base.as_str().unwrap_or_default();
            let count = text.chars().count();
            let at = element_index(n, count)?;
            let ch = text.chars().nth(at).unwrap_or_default();
            Ok(Cow::Owned(Value::String(ch.to_string())))
        }
        (base, index) => Err(ExprError::new(format!(
            "cannot index {} with {}",
            type_name(&base),
            type_name(index)
        ))),
    }
}

/// Resolves a (possibly negative) integer index against a length.
fn element_index(index: &Number, len: usize) -> Result<usize> {
    let Some(i) = as_int(index) else {
        return Err(ExprError::new(format!(
            "index must be an integer, not {index}"
        )));
    };
    let len_i = len as i128;
    let resolved = if i < 0 { i + len_i } else { i };
    if (0..len_i).contains(&resolved) {
        Ok(resolved as usize)
    } else {
        Err(ExprError::new(format!(
            "index {i} out of range for length {len}"
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Truthiness and comparisons
// ---------------------------------------------------------------------------------------------

/// Python truthiness: `null`, `false`, `0`, `0.0`, `""`, `[]` and `{}` are false; all else true.
pub fn truthy(value: &impl Borrow<Value>) -> bool {
    match value.borrow() {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => match num(n) {
            Num::Int(i) => i != 0,
            Num::Float(f) => f != 0.0,
        },
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// `lhs == rhs`: JSON equality, except that numbers compare numerically (`1 == 1.0`) and a
/// number never equals a boolean. Arrays and objects compare element by element.
pub fn eq(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> bool {
    values_equal(lhs.borrow(), rhs.borrow())
}

fn values_equal(lhs: &Value, rhs: &Value) -> bool {
    match (lhs, rhs) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => cmp_numbers(a, b) == Ordering::Equal,
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| values_equal(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, x)| b.get(key).is_some_and(|y| values_equal(x, y)))
        }
        _ => false,
    }
}

/// `lhs != rhs`: the negation of [`eq`].
pub fn ne(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> bool {
    !values_equal(lhs.borrow(), rhs.borrow())
}

/// `lhs < rhs` (see [`compare`] for which types order).
pub fn lt(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<bool> {
    Ok(compare("<", lhs.borrow(), rhs.borrow())? == Ordering::Less)
}

/// `lhs <= rhs` (see [`compare`] for which types order).
pub fn le(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<bool> {
    Ok(compare("<=", lhs.borrow(), rhs.borrow())? != Ordering::Greater)
}

/// `lhs > rhs` (see [`compare`] for which types order).
pub fn gt(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<bool> {
    Ok(compare(">", lhs.borrow(), rhs.borrow())? == Ordering::Greater)
}

/// `lhs >= rhs` (see [`compare`] for which types order).
pub fn ge(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<bool> {
    Ok(compare(">=", lhs.borrow(), rhs.borrow())? != Ordering::Less)
}

/// Orders two values for the operator `op` (used in the error message):
///
/// * numbers numerically (integers and floats compare exactly);
/// * strings lexicographically by Unicode code point;
/// * booleans with `false < true`;
/// * arrays lexicographically like Python: the first pair of elements that are not [`eq`]
///   decides (and must itself be orderable), otherwise the shorter array is smaller.
///
/// Any other pair of types is an error naming both, e.g. `'>=' not supported between null and
/// number`.
pub fn compare(op: &str, lhs: &Value, rhs: &Value) -> Result<Ordering> {
    match (lhs, rhs) {
        (Value::Number(a), Value::Number(b)) => Ok(cmp_numbers(a, b)),
        (Value::String(a), Value::String(b)) => Ok(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Ok(a.cmp(b)),
        (Value::Array(a), Value::Array(b)) => {
            match a.iter().zip(b).find(|(x, y)| !values_equal(x, y)) {
                Some((x, y)) => compare(op, x, y),
                None => Ok(a.len().cmp(&b.len())),
            }
        }
        _ => Err(unsupported(op, lhs, rhs)),
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------------

/// A JSON number, widened: every `i64` and `u64` fits in `i128`.
#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

fn num(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Num::Int(i128::from(u))
    } else {
        Num::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn as_int(n: &Number) -> Option<i128> {
    match num(n) {
        Num::Int(i) => Some(i),
        Num::Float(_) => None,
    }
}

/// Orders two numbers exactly (no rounding of large integers to float).
fn cmp_numbers(a: &Number, b: &Number) -> Ordering {
    match (num(a), num(b)) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (Num::Int(x), Num::Float(y)) => cmp_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_int_float(y, x).reverse(),
    }
}

/// Exact comparison of an integer (at most 65 bits) with a finite float.
fn cmp_int_float(i: i128, f: f64) -> Ordering {
    // 2^64 is exactly representable; every integer we hold is within ±2^64.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    if f.is_nan() {
        return Ordering::Equal;
    }
    let floor = f.floor();
    if floor >= LIMIT {
        return Ordering::Less;
    }
    if floor < -LIMIT {
        return Ordering::Greater;
    }
    // |floor| <= 2^64 and integral: the conversion is exact.
    let floor_i = floor as i128;
    match i.cmp(&floor_i) {
        Ordering::Equal if f > floor => Ordering::Less,
        other => other,
    }
}

fn int_value(op: &str, i: Option<i128>) -> Result<Val<'static>> {
    let value = i.and_then(|i| {
        i64::try_from(i)
            .map(Value::from)
            .or_else(|_| u64::try_from(i).map(Value::from))
            .ok()
    });
    value
        .map(Cow::Owned)
        .ok_or_else(|| ExprError::new(format!("integer overflow in '{op}'")))
}

fn float_value(op: &str, f: f64) -> Result<Val<'static>> {
    Number::from_f64(f)
        .map(|n| Cow::Owned(Value::Number(n)))
        .ok_or_else(|| ExprError::new(format!("result of '{op}' is not a finite number")))
}

fn to_f64(n: Num) -> f64 {
    match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }
}

/// Applies an arithmetic operator to two numbers: integer if both are integers (checked),
/// float otherwise.
fn arith(
    op: &str,
    a: &Number,
    b: &Number,
    on_int: fn(i128, i128) -> Option<i128>,
    on_float: fn(f64, f64) -> f64,
) -> Result<Val<'static>> {
    match (num(a), num(b)) {
        (Num::Int(x), Num::Int(y)) => int_value(op, on_int(x, y)),
        (x, y) => float_value(op, on_float(to_f64(x), to_f64(y))),
    }
}

// ---------------------------------------------------------------------------------------------
// Arithmetic
// ---------------------------------------------------------------------------------------------

/// `lhs + rhs`: numbers add (integer + integer stays an integer, overflow is an error; mixing
/// in a float gives a float); strings concatenate; arrays concatenate.
pub fn add(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<Val<'static>> {
    let (lhs, rhs) = (lhs.borrow(), rhs.borrow());
    match (lhs, rhs) {
        (Value::Number(a), Value::Number(b)) => arith("+", a, b, i128::checked_add, |x, y| x + y),
        (Value::String(a), Value::String(b)) => Ok(Cow::Owned(Value::String(format!("{a}{b}")))),
        (Value::Array(a), Value::Array(b)) => Ok(Cow::Owned(Value::Array(
            a.iter().chain(b).cloned().collect(),
        ))),
        _ => Err(unsupported("+", lhs, rhs)),
    }
}

/// `lhs - rhs`: numbers only.
pub fn sub(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<Val<'static>> {
    let (lhs, rhs) = (lhs.borrow(), rhs.borrow());
    match (lhs, rhs) {
        (Value::Number(a), Value::Number(b)) => arith("-", a, b, i128::checked_sub, |x, y| x - y),
        _ => Err(unsupported("-", lhs, rhs)),
    }
}

/// `lhs * rhs`: numbers multiply; a string or array times an integer (either order) repeats it
/// like Python (zero or a negative count gives an empty result). A repetition longer than
/// [`MAX_REPEAT_LEN`] is an error.
pub fn mul(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<Val<'static>> {
    let (lhs, rhs) = (lhs.borrow(), rhs.borrow());
    match (lhs, rhs) {
        (Value::Number(a), Value::Number(b)) => arith("*", a, b, i128::checked_mul, |x, y| x * y),
        (Value::String(s), Value::Number(n)) | (Value::Number(n), Value::String(s)) => {
            match as_int(n) {
                Some(count) => {
                    let count = repeat_count(s.len(), count)?;
                    Ok(Cow::Owned(Value::String(s.repeat(count))))
                }
                None => Err(unsupported("*", lhs, rhs).with_detail("the count must be an integer")),
            }
        }
        (Value::Array(items), Value::Number(n)) | (Value::Number(n), Value::Array(items)) => {
            match as_int(n) {
                Some(count) => {
                    let count = repeat_count(items.len(), count)?;
                    let mut repeated = Vec::with_capacity(items.len() * count);
                    for _ in 0..count {
                        repeated.extend(items.iter().cloned());
                    }
                    Ok(Cow::Owned(Value::Array(repeated)))
                }
                None => Err(unsupported("*", lhs, rhs).with_detail("the count must be an integer")),
            }
        }
        _ => Err(unsupported("*", lhs, rhs)),
    }
}

fn repeat_count(len: usize, count: i128) -> Result<usize> {
    if count <= 0 || len == 0 {
        return Ok(0);
    }
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    match len.checked_mul(count) {
        Some(total) if total <= MAX_REPEAT_LEN => Ok(count),
        _ => Err(ExprError::new(format!(
            "repetition result is too long (the limit is {MAX_REPEAT_LEN})"
        ))),
    }
}

/// `lhs / rhs`: true division of numbers, always a float; dividing by zero is an error.
pub fn div(lhs: &impl Borrow<Value>, rhs: &impl Borrow<Value>) -> Result<Val<'static>> {
    let (lhs, rhs) = (lhs.borrow(), rhs.borrow());
    match (lhs, rhs) {
        (Value::Number(a), Value::Number(b)) => {
            let divisor = to_f64(num(b));
            if divisor == 0.0 {
                return Err(ExprError::new("division by zero"));
            }
            float_value("/", to_f64(num(a)) / divisor)
        }
        _ => Err(unsupported("/", lhs, rhs)),
    }
}

/// `-operand`: numbers only (integer negation is checked).
pub fn neg(operand: &impl Borrow<Value>) -> Result<Val<'static>> {
    match operand.borrow() {
        Value::Number(n) => match num(n) {
            Num::Int(i) => int_value("-", i.checked_neg()),
            Num::Float(f) => float_value("-", -f),
        },
        other => Err(ExprError::new(format!(
            "unary '-' not supported for {}",
            type_name(other)
        ))),
    }
}

#[cfg(test)]
mod tests;
