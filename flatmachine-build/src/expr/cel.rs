//! CEL conditions (`expression_engine: cel`): checked at build time, evaluated at run time.
//!
//! [`check`] parses a condition with the `cel` crate (the parser the runtime uses), reports a
//! syntax error at the position the parser gives, and rejects every variable other than
//! `context` (and the variables a macro such as `all(x, ...)` binds) with a "did you mean". It
//! also works out which top-level context fields the condition reads, so the runtime converts
//! only those to CEL values.

use std::collections::BTreeSet;

use cel::common::ast::{Expr, IdedExpr, operators};
use cel::common::value::CelVal;

use super::{ExprSyntaxError, Span, parser::scope_error};

/// Names a CEL condition may use besides `context`, for "did you mean" suggestions.
const KNOWN_NAMES: &[&str] = &["context", "true", "false", "null"];

/// What the compiler learnt from a valid CEL condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CelCondition {
    /// Every top-level context field the condition reads, in name order, when it reads the
    /// context only through `context.<name>`, `context["<name>"]` or `has(context.<name>)`.
    /// `None` when it uses `context` as a whole (`size(context)`, `context[k]`, a macro over
    /// `context`...), in which case the runtime converts the whole context.
    pub fields: Option<Vec<String>>,
}

/// Deepest nesting a CEL condition may have (operators, calls, lists, macros; parentheses
/// alone do not count). The `cel` interpreter evaluates recursively: this keeps evaluation
/// within a 2 MiB thread stack even in a debug build (measured: depth 50 fits, 95 does not).
pub const MAX_CEL_DEPTH: usize = 32;

/// Stack for the thread that runs the `cel` parser. Its generated ANTLR parser recurses deeply:
/// in a debug build, 12 nested parentheses already overflow a 2 MiB stack.
pub const PARSER_STACK: usize = 64 << 20;

/// Parses and checks a CEL condition. An empty or whitespace-only condition is always true.
pub fn check(src: &str) -> Result<CelCondition, ExprSyntaxError> {
    if src.trim().is_empty() {
        return Ok(CelCondition {
            fields: Some(Vec::new()),
        });
    }
    let whole = Span::new(0, src.len());
    let owned = src.to_owned();
    // The parser (generated code) runs on its own thread with a large stack; a panic in it is
    // reported as an error rather than taking the compiler down.
    let worker = std::thread::Builder::new()
        .name("cel-parser".into())
        .stack_size(PARSER_STACK)
        .spawn(move || check_here(&owned));
    match worker.map(std::thread::JoinHandle::join) {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ExprSyntaxError::new(
            "the CEL parser failed on this condition",
            whole,
        )),
        Err(e) => Err(ExprSyntaxError::new(
            format!("could not start the CEL parser: {e}"),
            whole,
        )),
    }
}

fn check_here(src: &str) -> Result<CelCondition, ExprSyntaxError> {
    let expr = cel::parser::Parser::new()
        .parse(src)
        .map_err(|errors| syntax_error(src, &errors))?;
    let mut walk = Walk {
        src,
        scopes: Vec::new(),
        fields: Some(BTreeSet::new()),
    };
    walk.expr(&expr, 1)?;
    Ok(CelCondition {
        fields: walk.fields.map(|f| f.into_iter().collect()),
    })
}

/// The first error the parser reports, located in the source.
fn syntax_error(src: &str, errors: &cel::ParseErrors) -> ExprSyntaxError {
    let Some(first) = errors.errors.first() else {
        return ExprSyntaxError::new("invalid CEL", Span::new(0, src.len()));
    };
    let (line, col) = first.pos;
    let offset = offset_of(src, line, col);
    let len = token_len(src, offset);
    let message = first
        .msg
        .strip_prefix("Syntax error: ")
        .unwrap_or(&first.msg);
    // ANTLR lists every token it could have taken (`expecting {'[', '{', '(', ...}`): too long
    // to help; keep what it found.
    match message.split_once(" expecting {") {
        Some((found, _)) => ExprSyntaxError::new(format!("CEL syntax error: {found}"), Span::new(offset, len))
            .with_help("a CEL value is a literal, `context.<field>`, a call, a list, a map or a parenthesised expression"),
        None => ExprSyntaxError::new(format!("CEL syntax error: {message}"), Span::new(offset, len)),
    }
}

/// Byte offset of a parser position (1-based line and column, in characters); the start of
/// the condition when the parser gives none.
fn offset_of(src: &str, line: isize, col: isize) -> usize {
    if line < 1 || col < 1 {
        return 0;
    }
    let col = col - 1;
    let mut start = 0;
    for (i, l) in src.split_inclusive('\n').enumerate() {
        if i + 1 == line as usize {
            return l
                .char_indices()
                .nth(col as usize)
                .map_or(start + l.trim_end_matches('\n').len(), |(b, _)| start + b);
        }
        start += l.len();
    }
    src.len()
}

/// Length of the token starting at `offset`: an identifier or number, a two-character
/// operator, else one character (0 at the end of the source).
fn token_len(src: &str, offset: usize) -> usize {
    let rest = &src[offset.min(src.len())..];
    let word = rest
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(rest.len(), |(i, _)| i);
    if word > 0 {
        return word;
    }
    match ["&&", "||", "==", "!=", "<=", ">="]
        .iter()
        .find(|op| rest.starts_with(**op))
    {
        Some(op) => op.len(),
        None => rest.chars().next().map_or(0, char::len_utf8),
    }
}

struct Walk<'s> {
    src: &'s str,
    /// Variables bound by enclosing macros (comprehensions).
    scopes: Vec<String>,
    /// Top-level context fields read so far; `None` once `context` is used as a whole.
    fields: Option<BTreeSet<String>>,
}

impl Walk<'_> {
    fn bound(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s == name)
    }

    /// Whether this is the `context` variable itself (not a macro variable of that name).
    fn is_context(&self, e: &IdedExpr) -> bool {
        matches!(&e.expr, Expr::Ident(n) if n == "context" && !self.bound("context"))
    }

    fn field(&mut self, name: &str) {
        if let Some(f) = &mut self.fields {
            f.insert(name.to_string());
        }
    }

    fn expr(&mut self, e: &IdedExpr, depth: usize) -> Result<(), ExprSyntaxError> {
        if depth > MAX_CEL_DEPTH {
            return Err(ExprSyntaxError::new(
                format!("condition is nested too deeply (the limit is {MAX_CEL_DEPTH} levels)"),
                Span::new(0, self.src.len()),
            ));
        }
        let d = depth + 1;
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => Ok(()),
            Expr::Ident(name) => {
                if name == "context" || name.starts_with('@') || self.bound(name) {
                    if name == "context" && !self.bound(name) {
                        // Used as a whole: every field may be read.
                        self.fields = None;
                    }
                    Ok(())
                } else {
                    Err(self.unknown(name))
                }
            }
            Expr::Select(sel) => {
                if self.is_context(&sel.operand) {
                    self.field(&sel.field);
                    Ok(())
                } else {
                    self.expr(&sel.operand, d)
                }
            }
            Expr::Call(call) => {
                if call.func_name == operators::INDEX
                    && call.target.is_none()
                    && call.args.len() == 2
                    && self.is_context(&call.args[0])
                    && let Expr::Literal(CelVal::String(key)) = &call.args[1].expr
                {
                    self.field(key);
                    return Ok(());
                }
                if let Some(target) = &call.target {
                    // `optional.of(x)` and friends: a qualified function, not a variable.
                    let qualified =
                        matches!(&target.expr, Expr::Ident(n) if n == "optional" && !self.bound(n));
                    if !qualified {
                        self.expr(target, d)?;
                    }
                }
                call.args.iter().try_for_each(|a| self.expr(a, d))
            }
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range, d)?;
                self.expr(&c.accu_init, d)?;
                let depth = self.scopes.len();
                self.scopes.push(c.accu_var.clone());
                self.expr(&c.result, d)?;
                self.scopes.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    self.scopes.push(v.clone());
                }
                let inner = self
                    .expr(&c.loop_cond, d)
                    .and_then(|()| self.expr(&c.loop_step, d));
                self.scopes.truncate(depth);
                inner
            }
            Expr::List(list) => list.elements.iter().try_for_each(|x| self.expr(x, d)),
            Expr::Map(map) => map
                .entries
                .iter()
                .try_for_each(|entry| self.entry(entry, d)),
            Expr::Struct(st) => st.entries.iter().try_for_each(|entry| self.entry(entry, d)),
        }
    }

    fn entry(
        &mut self,
        entry: &cel::common::ast::IdedEntryExpr,
        depth: usize,
    ) -> Result<(), ExprSyntaxError> {
        match &entry.expr {
            cel::common::ast::EntryExpr::StructField(f) => self.expr(&f.value, depth),
            cel::common::ast::EntryExpr::MapEntry(m) => {
                self.expr(&m.key, depth)?;
                self.expr(&m.value, depth)
            }
        }
    }

    /// The error for an unknown variable, at its first use in the source.
    fn unknown(&self, name: &str) -> ExprSyntaxError {
        let offset = find_ident(self.src, name).unwrap_or(0);
        let mut error = scope_error(name, Span::new(offset, name.len()), KNOWN_NAMES);
        if error.help.is_none() && !KNOWN_NAMES.contains(&name) {
            error.help =
                Some("a CEL condition reads `context` (and the variables its macros bind)".into());
        }
        error
    }
}

/// Byte offset of the first use of `name` as an identifier (not inside a string literal, not
/// after a `.`).
fn find_ident(src: &str, name: &str) -> Option<usize> {
    let bytes = src.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == b'\\' {
                i += 2;
                continue;
            }
            if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if b == b'"' || b == b'\'' {
            quote = Some(b);
            i += 1;
            continue;
        }
        let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        if is_word(b) {
            let start = i;
            while i < bytes.len() && is_word(bytes[i]) {
                i += 1;
            }
            let before = src[..start].trim_end();
            if &src[start..i] == name && !before.ends_with('.') {
                return Some(start);
            }
            continue;
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(src: &str) -> Option<Vec<String>> {
        check(src).unwrap().fields
    }

    #[test]
    fn fields_read() {
        assert_eq!(
            fields("context.b > 1 && has(context.a) && context['c'] == 'x'"),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(
            fields("context.items.all(i, i.ok)"),
            Some(vec!["items".into()])
        );
        assert_eq!(fields("size(context) > 0"), None);
        assert_eq!(fields("context[context.k] == 1"), None);
        assert_eq!(fields("true"), Some(vec![]));
        assert_eq!(fields(""), Some(vec![]));
        // A macro variable named `context` shadows the machine context.
        assert_eq!(
            fields("context.xs.exists(context, context.y)"),
            Some(vec!["xs".into()])
        );
    }

    #[test]
    fn macro_variables_are_in_scope_only_inside() {
        assert!(check("context.xs.all(x, x > 0)").is_ok());
        assert!(check("context.xs.map(x, x * 2).exists(y, y > 3)").is_ok());
        let e = check("context.xs.all(x, x > 0) && x > 1").unwrap_err();
        assert_eq!(
            e.message,
            "unknown name `x`: conditions can only read `context`"
        );
    }

    #[test]
    fn unknown_variables_are_located_with_a_suggestion() {
        let src = "'contxt' == contxt.name";
        let e = check(src).unwrap_err();
        assert_eq!(&src[e.offset..e.offset + e.len], "contxt");
        assert_eq!(e.offset, 12);
        assert_eq!(e.help.as_deref(), Some("did you mean `context`?"));
        let e = check("input.x == 1").unwrap_err();
        assert!(
            e.message.contains("`input` is not in scope"),
            "{}",
            e.message
        );
    }

    #[test]
    fn syntax_errors_are_located() {
        let src = "context.score >= && context.ready";
        let e = check(src).unwrap_err();
        assert!(e.message.starts_with("CEL syntax error: "), "{}", e.message);
        assert_eq!(&src[e.offset..e.offset + e.len], "&&", "{e:?}");
        let e = check("context.a ==").unwrap_err();
        assert_eq!(e.offset, 12, "{e:?}");
        assert_eq!(e.len, 0);
        // Second line, after a multi-byte character.
        let src = "context.x == 1\n  || 'é' == )";
        let e = check(src).unwrap_err();
        assert_eq!(&src[e.offset..e.offset + e.len], ")", "{e:?}");
    }

    #[test]
    fn odd_input_never_panics() {
        for src in [
            "(",
            ")",
            "[[[",
            "'unterminated",
            "\"",
            "\\",
            "context.",
            "1 +",
            "{",
            "}",
            "@x",
            "..",
            "context.a.b.c.d(",
            "b'\\xff'",
            "r'",
            "has()",
            "has(context)",
            "x.all()",
            "[1,2].map(1, 2)",
            "{1: 2}.filter(k, v, true)",
            "\u{0}",
            "🙂",
            "context.🙂",
        ] {
            let _ = check(src);
        }
        let deep = format!("{}1{}", "(".repeat(500), ")".repeat(500));
        assert!(check(&deep).is_err());
        let chain = format!("{}1 == 1", "1 + ".repeat(5000));
        let e = check(&chain).unwrap_err();
        assert!(e.message.contains("nested too deeply"), "{e:?}");
        let ok = format!("{}1 == 1", "1 + ".repeat(MAX_CEL_DEPTH - 3));
        assert!(check(&ok).is_ok());
    }
}
