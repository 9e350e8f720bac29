//! Tokens of the condition language, produced on demand so errors come out in source order.

use super::{ExprSyntaxError, Span};

/// Python keywords (they never end an operand, and cannot start one).
pub(super) const PYTHON_KEYWORDS: &[&str] = &[
    "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del", "elif",
    "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda",
    "nonlocal", "not", "or", "pass", "raise", "return", "try", "while", "with", "yield",
];

/// One token kind.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    /// An identifier or keyword (`context`, `and`, `true`, `foo`, ...).
    Name(String),
    /// A decimal integer literal (its magnitude; the sign is a separate `-`).
    Int(u64),
    /// A float literal (always finite).
    Float(f64),
    /// A string literal, escapes resolved.
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Dot,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub(super) fn describe(&self) -> String {
        match self {
            Tok::Name(name) => format!("`{name}`"),
            Tok::Int(i) => format!("number `{i}`"),
            Tok::Float(f) => format!("number `{f:?}`"),
            Tok::Str(_) => "a string".to_owned(),
            Tok::Eof => "the end of the expression".to_owned(),
            punct => format!("`{}`", punct.punct_text()),
        }
    }

    fn punct_text(&self) -> &'static str {
        match self {
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Dot => ".",
            Tok::Comma => ",",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::EqEq => "==",
            Tok::NotEq => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            _ => "?",
        }
    }

    /// Whether this token can end an operand (so a following `.` is attribute access).
    fn ends_operand(&self) -> bool {
        match self {
            Tok::Name(name) => !PYTHON_KEYWORDS.contains(&name.as_str()),
            Tok::Int(_) | Tok::Float(_) | Tok::Str(_) | Tok::RParen | Tok::RBracket => true,
            _ => false,
        }
    }
}

/// A token and where it is.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub(super) tok: Tok,
    pub(super) span: Span,
}

/// The lexer: call [`Lexer::next_token`] until it returns [`Tok::Eof`].
pub(super) struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    prev_ends_operand: bool,
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

fn err(message: impl Into<String>, offset: usize, len: usize) -> ExprSyntaxError {
    ExprSyntaxError {
        message: message.into(),
        offset,
        len,
        help: None,
    }
}

impl<'s> Lexer<'s> {
    pub(super) fn new(src: &'s str) -> Self {
        Self {
            src,
            pos: 0,
            prev_ends_operand: false,
        }
    }

    fn rest(&self) -> &'s str {
        &self.src[self.pos..]
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_char_at(&self, n: usize) -> Option<char> {
        self.rest().chars().nth(n)
    }

    fn skip_trivia(&mut self) {
        loop {
            match self.peek_char() {
                Some(' ' | '\t' | '\n' | '\r' | '\x0c') => self.pos += 1,
                Some('#') => {
                    // A Python comment runs to the end of the line.
                    let len = self.rest().find('\n').unwrap_or(self.rest().len());
                    self.pos += len;
                }
                _ => return,
            }
        }
    }

    /// The next token, or the first lexical error.
    pub(super) fn next_token(&mut self) -> Result<Token, ExprSyntaxError> {
        self.skip_trivia();
        let start = self.pos;
        let tok = self.lex_token(start)?;
        let span = Span::new(start, self.pos - start);
        self.prev_ends_operand = tok.ends_operand();
        Ok(Token { tok, span })
    }

    fn lex_token(&mut self, start: usize) -> Result<Tok, ExprSyntaxError> {
        let Some(c) = self.peek_char() else {
            return Ok(Tok::Eof);
        };
        let next = self.peek_char_at(1);
        if c.is_ascii_digit()
            || (c == '.' && !self.prev_ends_operand && next.is_some_and(|n| n.is_ascii_digit()))
        {
            return self.lex_number(start);
        }
        if c == '"' || c == '\'' {
            return self.lex_string(start, c);
        }
        if is_ident_start(c) {
            let len = self
                .rest()
                .find(|ch: char| !is_ident_continue(ch))
                .unwrap_or(self.rest().len());
            let name = &self.rest()[..len];
            if matches!(self.src[start + len..].chars().next(), Some('"' | '\''))
                && is_string_prefix(name)
            {
                return Err(err(
                    "string prefixes (`f`, `r`, `b`, `u`) are not supported: write a plain 'string'",
                    start,
                    len,
                ));
            }
            self.pos += len;
            return Ok(Tok::Name(name.to_owned()));
        }

        let two = |a: char| next == Some(a);
        let (tok, len) = match c {
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '[' => (Tok::LBracket, 1),
            ']' => (Tok::RBracket, 1),
            '.' => (Tok::Dot, 1),
            ',' => (Tok::Comma, 1),
            '+' => (Tok::Plus, 1),
            '-' => (Tok::Minus, 1),
            '*' if two('*') => {
                return Err(err("the power operator `**` is not supported", start, 2));
            }
            '*' => (Tok::Star, 1),
            '/' if two('/') => {
                return Err(err(
                    "floor division `//` is not supported (`/` is true division)",
                    start,
                    2,
                ));
            }
            '/' => (Tok::Slash, 1),
            '%' => return Err(err("the `%` operator is not supported", start, 1)),
            '=' if two('=') => (Tok::EqEq, 2),
            '=' => {
                return Err(ExprSyntaxError {
                    help: Some("use `==` to compare".to_owned()),
                    ..err(
                        "`=` is assignment, which is not supported in a condition",
                        start,
                        1,
                    )
                });
            }
            '!' if two('=') => (Tok::NotEq, 2),
            '!' => {
                return Err(ExprSyntaxError {
                    help: Some("use `not` to negate".to_owned()),
                    ..err("`!` is not an operator here", start, 1)
                });
            }
            '<' if two('=') => (Tok::Le, 2),
            '<' if two('<') => return Err(err("bitwise operators are not supported", start, 2)),
            '<' if two('>') => {
                return Err(ExprSyntaxError {
                    help: Some("use `!=`".to_owned()),
                    ..err("`<>` is not an operator", start, 2)
                });
            }
            '<' => (Tok::Lt, 1),
            '>' if two('=') => (Tok::Ge, 2),
            '>' if two('>') => return Err(err("bitwise operators are not supported", start, 2)),
            '>' => (Tok::Gt, 1),
            '&' if two('&') => {
                return Err(ExprSyntaxError {
                    help: Some("use `and`".to_owned()),
                    ..err("`&&` is not an operator here", start, 2)
                });
            }
            '|' if two('|') => {
                return Err(ExprSyntaxError {
                    help: Some("use `or`".to_owned()),
                    ..err("`||` is not an operator here", start, 2)
                });
            }
            '&' | '|' | '^' | '~' => {
                return Err(err("bitwise operators are not supported", start, 1));
            }
            '@' => return Err(err("the `@` operator is not supported", start, 1)),
            ':' if two('=') => {
                return Err(err(
                    "assignment expressions (`:=`) are not supported",
                    start,
                    2,
                ));
            }
            ':' => return Err(err("slices and `:` are not supported", start, 1)),
            '{' if two('{') || two('%') => {
                let (open, close, shown) = if two('{') {
                    ("{{", "}}", "`{{ }}`")
                } else {
                    ("{%", "%}", "`{% %}`")
                };
                let len = self.rest()[open.len()..]
                    .find(close)
                    .map_or(open.len(), |at| open.len() + at + close.len());
                return Err(err(
                    format!(
                        "conditions are plain expressions, not Jinja templates: remove the {shown}"
                    ),
                    start,
                    len,
                ));
            }
            '{' => return Err(err("dict and set literals are not supported", start, 1)),
            other => {
                return Err(err(
                    format!("unexpected character `{}`", other.escape_debug()),
                    start,
                    other.len_utf8(),
                ));
            }
        };
        self.pos += len;
        Ok(tok)
    }

    /// Decimal integers and floats, Python style: `12`, `1_000`, `1.5`, `.5`, `5.`, `1e3`, `2.5E-3`.
    fn lex_number(&mut self, start: usize) -> Result<Tok, ExprSyntaxError> {
        let bytes = self.src.as_bytes();
        let mut end = start;
        let digits = |mut at: usize| {
            // Digits with single underscores between them.
            while at < bytes.len()
                && (bytes[at].is_ascii_digit()
                    || (bytes[at] == b'_'
                        && at > start
                        && bytes[at - 1].is_ascii_digit()
                        && bytes.get(at + 1).is_some_and(u8::is_ascii_digit)))
            {
                at += 1;
            }
            at
        };
        let exponent_len = |at: usize| -> usize {
            // `e`/`E`, optional sign, at least one digit.
            if !matches!(bytes.get(at), Some(b'e' | b'E')) {
                return 0;
            }
            let mut digits_at = at + 1;
            if matches!(bytes.get(digits_at), Some(b'+' | b'-')) {
                digits_at += 1;
            }
            if bytes.get(digits_at).is_some_and(u8::is_ascii_digit) {
                digits(digits_at) - at
            } else {
                0
            }
        };

        let mut is_float = false;
        if bytes[start] != b'.' {
            end = digits(end);
            if bytes[start] == b'0'
                && matches!(
                    bytes.get(start + 1),
                    Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')
                )
            {
                let len = self.ident_run_len(start);
                return Err(err(
                    "only decimal number literals are supported",
                    start,
                    len,
                ));
            }
        }
        if bytes.get(end) == Some(&b'.') {
            let after = self.src[end + 1..].chars().next();
            if after.is_some_and(|c| c.is_ascii_digit()) {
                is_float = true;
                end = digits(end + 1);
            } else if exponent_len(end + 1) > 0 {
                is_float = true;
                end += 1;
            } else if after.is_some_and(is_ident_start) {
                let len = self.ident_run_len(end + 1) + end + 1 - start;
                return Err(ExprSyntaxError {
                    help: Some("attributes of numbers are not supported".to_owned()),
                    ..err("invalid number literal", start, len)
                });
            } else {
                // `5.` is a float in Python.
                is_float = true;
                end += 1;
            }
        }
        let exp = exponent_len(end);
        if exp > 0 {
            is_float = true;
            end += exp;
        }
        if self.src[end..]
            .chars()
            .next()
            .is_some_and(is_ident_continue)
        {
            let len = self.ident_run_len(end) + end - start;
            return Err(err("invalid number literal", start, len));
        }
        let text: String = self.src[start..end].chars().filter(|&c| c != '_').collect();
        self.pos = end;
        let len = end - start;
        if is_float {
            match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Tok::Float(f)),
                _ => Err(err("float literal is out of range", start, len)),
            }
        } else {
            if text.len() > 1 && text.starts_with('0') && text.bytes().any(|b| b != b'0') {
                return Err(err(
                    "leading zeros in integer literals are not permitted",
                    start,
                    len,
                ));
            }
            match text.parse::<u64>() {
                Ok(i) if i <= 1 << 63 => Ok(Tok::Int(i)),
                _ => Err(err(
                    format!("integer literal is too large (the maximum is {})", i64::MAX),
                    start,
                    len,
                )),
            }
        }
    }

    /// Length in bytes of the run of identifier characters starting at `at`.
    fn ident_run_len(&self, at: usize) -> usize {
        self.src[at..]
            .find(|c: char| !is_ident_continue(c))
            .unwrap_or(self.src.len() - at)
    }

    fn lex_string(&mut self, start: usize, quote: char) -> Result<Tok, ExprSyntaxError> {
        let mut chars = self.src[start + 1..].char_indices();
        let triple: String = [quote; 3].iter().collect();
        if self.src[start..].starts_with(&triple) {
            return Err(err("triple-quoted strings are not supported", start, 3));
        }
        let mut value = String::new();
        while let Some((i, c)) = chars.next() {
            let at = start + 1 + i;
            match c {
                c if c == quote => {
                    self.pos = at + 1;
                    return Ok(Tok::Str(value));
                }
                '\n' | '\r' => break,
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '\'')) => value.push('\''),
                    Some((_, '"')) => value.push('"'),
                    Some((_, other)) => {
                        return Err(ExprSyntaxError {
                            help: Some("supported escapes: \\n \\t \\r \\\\ \\' \\\"".to_owned()),
                            ..err(
                                format!("unsupported escape sequence `\\{}`", other.escape_debug()),
                                at,
                                1 + other.len_utf8(),
                            )
                        });
                    }
                    None => break,
                },
                c => value.push(c),
            }
        }
        let line_len = self.src[start..]
            .find(['\n', '\r'])
            .unwrap_or(self.src.len() - start);
        Err(err("unterminated string literal", start, line_len))
    }
}

fn is_string_prefix(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "f" | "r" | "b" | "u" | "rb" | "br" | "fr" | "rf"
    )
}
