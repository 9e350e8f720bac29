//! Recursive-descent parser with Python's precedence.

use std::collections::VecDeque;

use super::lexer::{Lexer, PYTHON_KEYWORDS, Tok, Token};
use super::{BinaryOp, CompareOp, ExprSyntaxError, Literal, MAX_DEPTH, Node, NodeKind, Span};

/// Names a condition may use besides `context`, for "did you mean" suggestions.
const KNOWN_NAMES: &[&str] = &["context", "true", "false", "null", "True", "False", "None"];

pub(super) struct Parser<'s> {
    src: &'s str,
    lexer: Lexer<'s>,
    peeked: VecDeque<Token>,
    nesting: usize,
}

/// What may stand where a value is expected.
const VALUE_HELP: &str = "a value is `context.<field>`, a literal (`8`, `'text'`, `true`, `null`) or a parenthesised expression";

fn err(message: impl Into<String>, span: Span) -> ExprSyntaxError {
    ExprSyntaxError::new(message, span)
}

fn is_name(token: &Token, name: &str) -> bool {
    matches!(&token.tok, Tok::Name(n) if n == name)
}

impl<'s> Parser<'s> {
    pub(super) fn new(src: &'s str) -> Self {
        Self {
            src,
            lexer: Lexer::new(src),
            peeked: VecDeque::new(),
            nesting: 0,
        }
    }

    // ---- token plumbing ---------------------------------------------------------------------

    fn fill(&mut self, n: usize) -> Result<(), ExprSyntaxError> {
        while self.peeked.len() < n {
            let token = self.lexer.next_token()?;
            self.peeked.push_back(token);
        }
        Ok(())
    }

    fn peek(&mut self) -> Result<&Token, ExprSyntaxError> {
        self.fill(1)?;
        Ok(&self.peeked[0])
    }

    /// The token after the next one (only used after a keyword, to spot `not in` / `is not`).
    fn peek2(&mut self) -> Result<&Token, ExprSyntaxError> {
        self.fill(2)?;
        Ok(&self.peeked[1])
    }

    fn bump(&mut self) -> Result<Token, ExprSyntaxError> {
        self.fill(1)?;
        Ok(self.peeked.pop_front().unwrap_or(Token {
            tok: Tok::Eof,
            span: Span::new(self.src.len(), 0),
        }))
    }

    /// Runs `f` one nesting level deeper, failing past [`MAX_DEPTH`].
    fn nested<T>(
        &mut self,
        at: Span,
        f: impl FnOnce(&mut Self) -> Result<T, ExprSyntaxError>,
    ) -> Result<T, ExprSyntaxError> {
        if self.nesting >= MAX_DEPTH {
            return Err(err(
                format!("expression is nested too deeply (the limit is {MAX_DEPTH} levels)"),
                at,
            ));
        }
        self.nesting += 1;
        let result = f(self);
        self.nesting -= 1;
        result
    }

    // ---- grammar ----------------------------------------------------------------------------

    /// The whole input: one expression, then the end.
    pub(super) fn parse_all(&mut self) -> Result<Node, ExprSyntaxError> {
        let node = self.parse_or()?;
        let token = self.peek()?.clone();
        match &token.tok {
            Tok::Eof => Ok(node),
            _ => Err(self.trailing_error(&token)),
        }
    }

    fn trailing_error(&mut self, token: &Token) -> ExprSyntaxError {
        let span = token.span;
        match &token.tok {
            Tok::Name(n) if n == "if" => err(
                "conditional expressions (`x if c else y`) are not supported",
                span,
            ),
            Tok::Name(n) if n == "for" => err("comprehensions are not supported", span),
            Tok::Name(n) if n == "not" => err(
                format!("expected an operator, found {}", token.tok.describe()),
                span,
            )
            .with_help("`not` goes before its operand: `not x`"),
            Tok::Comma => err("tuples are not supported", span),
            Tok::RParen => err("unmatched `)`", span),
            Tok::RBracket => err("unmatched `]`", span),
            Tok::Str(_) => err("expected an operator before this string", span)
                .with_help("adjacent strings are not joined; use `+`"),
            other => err(
                format!(
                    "expected an operator or the end of the expression, found {}",
                    other.describe()
                ),
                span,
            ),
        }
    }

    fn parse_or(&mut self) -> Result<Node, ExprSyntaxError> {
        let first = self.parse_and()?;
        if !is_name(self.peek()?, "or") {
            return Ok(first);
        }
        let mut items = vec![first];
        while is_name(self.peek()?, "or") {
            self.bump()?;
            items.push(self.parse_and()?);
        }
        let span = items[0].span.to(items[items.len() - 1].span);
        Node::new(NodeKind::Or(items), span)
    }

    fn parse_and(&mut self) -> Result<Node, ExprSyntaxError> {
        let first = self.parse_not()?;
        if !is_name(self.peek()?, "and") {
            return Ok(first);
        }
        let mut items = vec![first];
        while is_name(self.peek()?, "and") {
            self.bump()?;
            items.push(self.parse_not()?);
        }
        let span = items[0].span.to(items[items.len() - 1].span);
        Node::new(NodeKind::And(items), span)
    }

    fn parse_not(&mut self) -> Result<Node, ExprSyntaxError> {
        let token = self.peek()?;
        if !is_name(token, "not") {
            return self.parse_comparison();
        }
        let not = self.bump()?;
        let operand = self.nested(not.span, Self::parse_not)?;
        let span = not.span.to(operand.span);
        Node::new(NodeKind::Not(Box::new(operand)), span)
    }

    fn parse_comparison(&mut self) -> Result<Node, ExprSyntaxError> {
        let first = self.parse_sum()?;
        let mut rest = Vec::new();
        loop {
            let token = self.peek()?.clone();
            let op = match &token.tok {
                Tok::EqEq => CompareOp::Eq,
                Tok::NotEq => CompareOp::Ne,
                Tok::Lt => CompareOp::Lt,
                Tok::Le => CompareOp::Le,
                Tok::Gt => CompareOp::Gt,
                Tok::Ge => CompareOp::Ge,
                Tok::Name(n) if n == "in" => {
                    return Err(err("the `in` operator is not supported", token.span));
                }
                Tok::Name(n) if n == "not" => {
                    let next = self.peek2()?;
                    if is_name(next, "in") {
                        let span = token.span.to(next.span);
                        return Err(err("the `not in` operator is not supported", span));
                    }
                    break;
                }
                Tok::Name(n) if n == "is" => {
                    let next = self.peek2()?;
                    let (span, message, help) = if is_name(next, "not") {
                        (
                            token.span.to(next.span),
                            "the `is not` operator is not supported",
                            "use `!=` (e.g. `context.x != null`)",
                        )
                    } else {
                        (
                            token.span,
                            "the `is` operator is not supported",
                            "use `==` (e.g. `context.x == null`)",
                        )
                    };
                    return Err(err(message, span).with_help(help));
                }
                _ => break,
            };
            self.bump()?;
            let rhs = self.parse_sum()?;
            rest.push((op, rhs));
        }
        if rest.is_empty() {
            return Ok(first);
        }
        let span = first.span.to(rest[rest.len() - 1].1.span);
        Node::new(
            NodeKind::Compare {
                first: Box::new(first),
                rest,
            },
            span,
        )
    }

    fn parse_sum(&mut self) -> Result<Node, ExprSyntaxError> {
        let mut lhs = self.parse_term()?;
        loop {
            let op = match self.peek()?.tok {
                Tok::Plus => BinaryOp::Add,
                Tok::Minus => BinaryOp::Sub,
                _ => return Ok(lhs),
            };
            self.bump()?;
            let rhs = self.parse_term()?;
            lhs = binary(op, lhs, rhs)?;
        }
    }

    fn parse_term(&mut self) -> Result<Node, ExprSyntaxError> {
        let mut lhs = self.parse_unary()?;
        loop {
            let op = match self.peek()?.tok {
                Tok::Star => BinaryOp::Mul,
                Tok::Slash => BinaryOp::Div,
                _ => return Ok(lhs),
            };
            self.bump()?;
            let rhs = self.parse_unary()?;
            lhs = binary(op, lhs, rhs)?;
        }
    }

    fn parse_unary(&mut self) -> Result<Node, ExprSyntaxError> {
        let token = self.peek()?.clone();
        match token.tok {
            Tok::Minus => {
                self.bump()?;
                // `-9223372036854775808` is only representable as a whole.
                if let Tok::Int(magnitude) = self.peek()?.tok
                    && magnitude == 1 << 63
                {
                    let literal = self.bump()?;
                    let node = Node::new(
                        NodeKind::Literal(Literal::Int(i64::MIN)),
                        token.span.to(literal.span),
                    )?;
                    return self.parse_postfix_from(node);
                }
                let operand = self.nested(token.span, Self::parse_unary)?;
                let span = token.span.to(operand.span);
                let kind = match operand.kind {
                    // Fold negative literals: `-5` is the literal -5.
                    NodeKind::Literal(Literal::Int(i)) if i != i64::MIN => {
                        NodeKind::Literal(Literal::Int(-i))
                    }
                    NodeKind::Literal(Literal::Float(f)) => NodeKind::Literal(Literal::Float(-f)),
                    _ => NodeKind::Neg(Box::new(operand)),
                };
                Node::new(kind, span)
            }
            Tok::Plus => Err(err("unary `+` is not supported", token.span)),
            _ => self.parse_postfix(),
        }
    }

    fn parse_postfix(&mut self) -> Result<Node, ExprSyntaxError> {
        let atom = self.parse_atom()?;
        self.parse_postfix_from(atom)
    }

    fn parse_postfix_from(&mut self, mut node: Node) -> Result<Node, ExprSyntaxError> {
        loop {
            let token = self.peek()?.clone();
            match token.tok {
                Tok::Dot => {
                    self.bump()?;
                    let name = self.bump()?;
                    match name.tok {
                        Tok::Name(field) => {
                            let span = node.span.to(name.span);
                            node = Node::new(
                                NodeKind::Field {
                                    base: Box::new(node),
                                    name: field,
                                    name_span: name.span,
                                },
                                span,
                            )?;
                        }
                        Tok::Int(i) => {
                            return Err(err("expected a field name after `.`", name.span)
                                .with_help(format!("use `[{i}]` to index an array")));
                        }
                        other => {
                            return Err(err(
                                format!(
                                    "expected a field name after `.`, found {}",
                                    other.describe()
                                ),
                                name.span,
                            ));
                        }
                    }
                }
                Tok::LBracket => {
                    self.bump()?;
                    let index = self.nested(token.span, |p| {
                        if p.peek()?.tok == Tok::RBracket {
                            let close = p.peek()?.span;
                            return Err(err("empty subscript `[]`", token.span.to(close)));
                        }
                        p.parse_or()
                    })?;
                    let close = self.bump()?;
                    match close.tok {
                        Tok::RBracket => {}
                        Tok::Comma => {
                            return Err(err(
                                "subscripts with several indexes are not supported",
                                close.span,
                            ));
                        }
                        Tok::Eof => return Err(err("unclosed `[`", token.span)),
                        other => {
                            return Err(err(
                                format!("expected `]`, found {}", other.describe()),
                                close.span,
                            ));
                        }
                    }
                    let span = node.span.to(close.span);
                    node = Node::new(
                        NodeKind::Index {
                            base: Box::new(node),
                            index: Box::new(index),
                        },
                        span,
                    )?;
                }
                Tok::LParen => {
                    let message = match node.kind {
                        NodeKind::Field { .. } => "method calls are not supported",
                        _ => "function calls are not supported",
                    };
                    return Err(err(message, node.span.to(token.span)));
                }
                _ => return Ok(node),
            }
        }
    }

    fn parse_atom(&mut self) -> Result<Node, ExprSyntaxError> {
        let token = self.bump()?;
        let span = token.span;
        let literal = |lit: Literal| Node::new(NodeKind::Literal(lit), span);
        match token.tok {
            Tok::Int(i) => match i64::try_from(i) {
                Ok(i) => literal(Literal::Int(i)),
                Err(_) => Err(err(
                    format!("integer literal is too large (the maximum is {})", i64::MAX),
                    span,
                )),
            },
            Tok::Float(f) => literal(Literal::Float(f)),
            Tok::Str(s) => literal(Literal::Str(s)),
            Tok::Name(name) => self.name_atom(name, span),
            Tok::LParen => self.nested(span, |p| p.paren_rest(span)),
            Tok::LBracket => Err(err("list literals are not supported", span)),
            Tok::Eof => Err(err("unexpected end of expression: expected a value", span)),
            other => Err(err(
                format!("expected a value, found {}", other.describe()),
                span,
            )
            .with_help(VALUE_HELP)),
        }
    }

    /// After `(`: the inner expression and the closing `)`.
    fn paren_rest(&mut self, open: Span) -> Result<Node, ExprSyntaxError> {
        if self.peek()?.tok == Tok::RParen {
            let close = self.peek()?.span;
            return Err(err(
                "empty parentheses `()` (tuples) are not supported",
                open.to(close),
            ));
        }
        let inner = self.parse_or()?;
        let close = self.bump()?;
        match close.tok {
            Tok::RParen => Ok(inner),
            Tok::Comma => Err(err("tuples are not supported", close.span)),
            Tok::Eof => Err(err("unclosed `(`", open)),
            Tok::Name(n) if n == "if" => Err(err(
                "conditional expressions (`x if c else y`) are not supported",
                close.span,
            )),
            Tok::Name(n) if n == "for" => Err(err("comprehensions are not supported", close.span)),
            other => Err(err(
                format!("expected `)` or an operator, found {}", other.describe()),
                close.span,
            )),
        }
    }

    fn name_atom(&mut self, name: String, span: Span) -> Result<Node, ExprSyntaxError> {
        let kind = match name.as_str() {
            "context" => NodeKind::Context,
            "true" | "True" => NodeKind::Literal(Literal::Bool(true)),
            "false" | "False" => NodeKind::Literal(Literal::Bool(false)),
            "null" | "None" => NodeKind::Literal(Literal::Null),
            "not" => {
                return Err(
                    err("`not` must be parenthesised here", span).with_help("write `(not x)`")
                );
            }
            "lambda" => return Err(err("lambda expressions are not supported", span)),
            "if" => {
                return Err(err(
                    "conditional expressions (`x if c else y`) are not supported",
                    span,
                ));
            }
            "await" | "yield" => return Err(err(format!("`{name}` is not supported"), span)),
            kw if PYTHON_KEYWORDS.contains(&kw) => {
                return Err(
                    err(format!("expected a value, found `{kw}`"), span).with_help(VALUE_HELP)
                );
            }
            _ => {
                if self.peek()?.tok == Tok::LParen {
                    let open = self.peek()?.span;
                    return Err(err("function calls are not supported", span.to(open)));
                }
                return Err(scope_error(&name, span, KNOWN_NAMES));
            }
        };
        Node::new(kind, span)
    }
}

fn binary(op: BinaryOp, lhs: Node, rhs: Node) -> Result<Node, ExprSyntaxError> {
    let span = lhs.span.to(rhs.span);
    Node::new(
        NodeKind::Binary {
            op,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
        },
        span,
    )
}

/// The error for a name other than `context` and the literal keywords.
pub(super) fn scope_error(name: &str, span: Span, known: &[&str]) -> ExprSyntaxError {
    if matches!(name, "input" | "output") {
        return err(
            format!("conditions can only read `context`; `{name}` is not in scope here"),
            span,
        )
        .with_help(if name == "input" {
            "copy the value into the context first (`context: { x: \"{{ input.x }}\" }` at the top of `data`) and test `context.x`"
        } else {
            "copy the value into the context first (`output_to_context: { x: \"{{ output.x }}\" }`) and test `context.x`"
        });
    }
    let error = err(
        format!("unknown name `{name}`: conditions can only read `context`"),
        span,
    );
    let best = known
        .iter()
        .map(|candidate| (strsim::jaro(name, candidate), candidate))
        .fold(
            None::<(f64, &&str)>,
            |best, (score, candidate)| match best {
                Some((best_score, _)) if best_score >= score => best,
                _ => Some((score, candidate)),
            },
        );
    match best {
        Some((score, candidate)) if score >= 0.7 => {
            error.with_help(format!("did you mean `{candidate}`?"))
        }
        _ => error,
    }
}
