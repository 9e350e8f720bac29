//! Which fields of a variable a template reads: `{{ context.summary }}`, `{{ input['name'] }}`.
//!
//! Found on minijinja's token stream, so it sees every read in expressions, statements and
//! filters alike. A read is *guarded* when the template itself allows the field to be missing:
//! it tests `is defined` / `is undefined` / `is none` anywhere, reads it through `| default`, or
//! tests its truth (`{% if x.f %}`, `x.f or ...`). The checks that use these reads report only
//! unguarded ones.

use minijinja::machinery::{Token, tokenize};
use std::collections::HashSet;

/// One read of `<var>.<field>` (or `<var>['field']`) in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRead {
    /// The field (the first segment after the variable).
    pub field: String,
    /// Byte offset of the field name in the template.
    pub offset: usize,
    /// Its length in bytes.
    pub len: usize,
    /// Whether the template allows the field to be missing (see the module docs).
    pub guarded: bool,
}

/// Every read of a field of `var` in `src`, in source order; nothing when `src` is not a
/// template, does not lex, or rebinds `var` (`{% set var = .. %}`, `{% for var in .. %}`).
/// `var.name(...)` is a method call, not a read.
pub fn field_reads(src: &str, var: &str) -> Vec<FieldRead> {
    if !crate::templates::is_template(src) {
        return Vec::new();
    }
    let mut tokens = Vec::new();
    for t in tokenize(src, false, Default::default()) {
        match t {
            Ok(t) => tokens.push(t),
            Err(_) => return Vec::new(),
        }
    }
    let ident = |i: usize| match tokens.get(i) {
        Some((Token::Ident(s), _)) => Some(*s),
        _ => None,
    };
    let rebinds = (0..tokens.len())
        .any(|i| matches!(ident(i), Some("set" | "for")) && ident(i + 1) == Some(var));
    if rebinds {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut guarded = HashSet::new();
    for i in 0..tokens.len() {
        if ident(i) != Some(var) || (i > 0 && matches!(tokens[i - 1].0, Token::Dot)) {
            continue;
        }
        let (field, span, next) = match (tokens.get(i + 1), tokens.get(i + 2), tokens.get(i + 3)) {
            (Some((Token::Dot, _)), Some((Token::Ident(f), span)), _) => {
                (f.to_string(), span, i + 3)
            }
            (
                Some((Token::BracketOpen, _)),
                Some((Token::Str(f), span)),
                Some((Token::BracketClose, _)),
            ) => (f.to_string(), span, i + 4),
            (
                Some((Token::BracketOpen, _)),
                Some((Token::String(f), span)),
                Some((Token::BracketClose, _)),
            ) => (f.to_string(), span, i + 4),
            _ => continue,
        };
        let after = |j: usize| tokens.get(next + j).map(|(t, _)| t);
        if matches!(after(0), Some(Token::ParenOpen)) {
            continue;
        }
        let tested = matches!(after(0), Some(Token::Ident("is")))
            && matches!(
                (after(1), after(2)),
                (Some(Token::Ident("defined" | "undefined" | "none")), _)
                    | (
                        Some(Token::Ident("not")),
                        Some(Token::Ident("defined" | "undefined" | "none"))
                    )
            );
        let defaulted = matches!(after(0), Some(Token::Pipe))
            && matches!(after(1), Some(Token::Ident("default" | "d")));
        let before = if i > 0 { ident(i - 1) } else { None };
        let truth = matches!(before, Some("if" | "elif" | "and" | "or" | "not"))
            || matches!(after(0), Some(Token::Ident("or" | "and")));
        if tested || defaulted || truth {
            guarded.insert(field.clone());
        }
        let (start, end) = (span.start_offset as usize, span.end_offset as usize);
        out.push(FieldRead {
            field,
            offset: start,
            len: end.saturating_sub(start).max(1),
            guarded: false,
        });
    }
    for r in &mut out {
        r.guarded = guarded.contains(&r.field);
    }
    out
}

/// Whether a template is exactly one read of `<var>.<field>` (`"{{ output.category }}"`, spaces
/// allowed): then it passes the field's value through unchanged. Returns the field.
pub fn single_field(src: &str, var: &str) -> Option<String> {
    let inner = src.trim().strip_prefix("{{")?.strip_suffix("}}")?.trim();
    let field = inner.strip_prefix(var)?.strip_prefix('.')?;
    let plain = !field.is_empty()
        && field.chars().all(|c| c.is_alphanumeric() || c == '_')
        && !field.starts_with(|c: char| c.is_ascii_digit());
    plain.then(|| field.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(src: &str, var: &str) -> Vec<(String, bool)> {
        field_reads(src, var)
            .into_iter()
            .map(|r| (r.field, r.guarded))
            .collect()
    }

    #[test]
    fn reads_are_found_with_their_place() {
        let src = "{{ context.summary }} and {{ context['odd key'] }} {{ x.context.no }}";
        let r = field_reads(src, "context");
        assert_eq!(r.len(), 2);
        assert_eq!(&src[r[0].offset..r[0].offset + r[0].len], "summary");
        assert_eq!(r[1].field, "odd key");
        assert!(field_reads("plain context.x", "context").is_empty());
        assert!(field_reads("{% set context = 1 %}{{ context.x }}", "context").is_empty());
        assert!(field_reads("{{ context.get('x') }}", "context").is_empty());
    }

    #[test]
    fn guards_cover_every_read_of_the_field() {
        assert_eq!(
            fields(
                "{% if input.a is defined %}{{ input.a }}{% endif %}{{ input.b | default('') }}{{ input.c }}",
                "input"
            ),
            [
                ("a".into(), true),
                ("a".into(), true),
                ("b".into(), true),
                ("c".into(), false)
            ]
        );
        assert_eq!(
            fields("{% if input.x %}{{ input.x }}{% endif %}", "input"),
            [("x".into(), true), ("x".into(), true)]
        );
    }

    #[test]
    fn single_field_templates() {
        assert_eq!(
            single_field(" {{ output.category }} ", "output").as_deref(),
            Some("category")
        );
        assert_eq!(
            single_field("{{ output.category | upper }}", "output"),
            None
        );
        assert_eq!(single_field("{{ output }}", "output"), None);
        assert_eq!(single_field("x {{ output.a }}", "output"), None);
    }
}
