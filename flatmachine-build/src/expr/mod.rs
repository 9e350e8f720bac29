//! The "simple" condition expression language.
//!
//! Transition conditions such as `context.score >= 8 and context.round < 4` are parsed here at
//! build time ([`parse`]) and compiled into Rust ([`condition_tokens`]) that evaluates them
//! against the machine context with the helpers in `flatmachine_runtime::expr`.
//!
//! The grammar follows Python's expression grammar and precedence (the reference
//! implementation parses conditions with Python's `ast` module); see `docs/expressions.md` for
//! the full rules and the deliberate differences.
//!
//! ```text
//! expr       := or
//! or         := and ("or" and)*
//! and        := not ("and" not)*
//! not        := "not" not | comparison
//! comparison := sum (("==" | "!=" | "<" | "<=" | ">" | ">=") sum)*     -- chained like Python
//! sum        := term (("+" | "-") term)*
//! term       := unary (("*" | "/") unary)*
//! unary      := "-" unary | postfix
//! postfix    := atom ("." name | "[" expr "]")*
//! atom       := "context" | literal | "(" expr ")"
//! literal    := integer | float | string | true | True | false | False | null | None
//! ```

pub mod cel;
mod codegen;
mod lexer;
mod parser;
#[cfg(test)]
mod tests;

use std::fmt;

pub use codegen::{condition_fn_body, condition_tokens};

/// Deepest nesting of parentheses, operators and subscripts an expression may have.
pub const MAX_DEPTH: usize = 100;

/// A byte range in the expression source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// Byte offset of the start.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

impl Span {
    /// A span from a byte offset and a byte length.
    pub fn new(offset: usize, len: usize) -> Self {
        Self { offset, len }
    }

    /// Byte offset just past the end.
    pub fn end(&self) -> usize {
        self.offset + self.len
    }

    /// The smallest span covering `self` and `other`.
    pub fn to(self, other: Span) -> Span {
        let start = self.offset.min(other.offset);
        let end = self.end().max(other.end());
        Span::new(start, end - start)
    }
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `null` / `None`.
    Null,
    /// `true` / `True` / `false` / `False`.
    Bool(bool),
    /// An integer (a negative literal is folded from unary minus).
    Int(i64),
    /// A finite float.
    Float(f64),
    /// A string, escapes resolved.
    Str(String),
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/` (true division)
    Div,
}

impl BinaryOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CompareOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }
}

/// An expression node and its location in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the node is.
    pub kind: NodeKind,
    /// Where it is (for a parenthesised expression: the inside of the parentheses).
    pub span: Span,
    /// Height of the tree below this node (a leaf is 1); bounded by [`MAX_DEPTH`].
    depth: usize,
}

/// The kinds of expression node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A literal value.
    Literal(Literal),
    /// The `context` variable (the whole machine context).
    Context,
    /// `base.name`: a field, `null` when missing or when `base` is not an object.
    Field {
        /// The value whose field is read.
        base: Box<Node>,
        /// The field name.
        name: String,
        /// Where the field name is.
        name_span: Span,
    },
    /// `base[index]`: an object key (missing is an error), an array or string element.
    Index {
        /// The value being indexed.
        base: Box<Node>,
        /// The key or index.
        index: Box<Node>,
    },
    /// `not operand`: a boolean.
    Not(Box<Node>),
    /// `-operand`: numbers only.
    Neg(Box<Node>),
    /// `lhs op rhs`, arithmetic.
    Binary {
        /// The operator.
        op: BinaryOp,
        /// The left operand.
        lhs: Box<Node>,
        /// The right operand.
        rhs: Box<Node>,
    },
    /// `first op1 x1 op2 x2 ...`: a (possibly chained) comparison. `a < b < c` means
    /// `a < b and b < c`, each operand evaluated at most once, left to right, short-circuiting.
    Compare {
        /// The leftmost operand.
        first: Box<Node>,
        /// Each following operator with its right operand (never empty).
        rest: Vec<(CompareOp, Node)>,
    },
    /// `a and b and ...` (two or more operands): a boolean, short-circuiting.
    And(Vec<Node>),
    /// `a or b or ...` (two or more operands): a boolean, short-circuiting.
    Or(Vec<Node>),
}

impl Node {
    /// A node, checking the depth limit.
    fn new(kind: NodeKind, span: Span) -> Result<Node, ExprSyntaxError> {
        let child_depth = match &kind {
            NodeKind::Literal(_) | NodeKind::Context => 0,
            NodeKind::Field { base, .. } => base.depth,
            NodeKind::Index { base, index } => base.depth.max(index.depth),
            NodeKind::Not(x) | NodeKind::Neg(x) => x.depth,
            NodeKind::Binary { lhs, rhs, .. } => lhs.depth.max(rhs.depth),
            NodeKind::Compare { first, rest } => rest
                .iter()
                .map(|(_, n)| n.depth)
                .fold(first.depth, usize::max),
            NodeKind::And(items) | NodeKind::Or(items) => {
                items.iter().map(|n| n.depth).max().unwrap_or(0)
            }
        };
        let depth = child_depth + 1;
        if depth > MAX_DEPTH {
            return Err(ExprSyntaxError::new(
                format!("expression is nested too deeply (the limit is {MAX_DEPTH} levels)"),
                span,
            ));
        }
        Ok(Node { kind, span, depth })
    }

    /// The static context path this node reads, if it is one: `context.a["b"].c` gives
    /// `["a", "b", "c"]`, bare `context` gives `[]`.
    fn static_context_path(&self) -> Option<Vec<String>> {
        match &self.kind {
            NodeKind::Context => Some(Vec::new()),
            NodeKind::Field { base, name, .. } => {
                let mut path = base.static_context_path()?;
                path.push(name.clone());
                Some(path)
            }
            NodeKind::Index { base, index } => match &index.kind {
                NodeKind::Literal(Literal::Str(key)) => {
                    let mut path = base.static_context_path()?;
                    path.push(key.clone());
                    Some(path)
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn collect_context_paths(&self, out: &mut Vec<ContextPath>) {
        if let Some(segments) = self.static_context_path() {
            if !segments.is_empty() {
                out.push(ContextPath {
                    segments,
                    span: self.span,
                });
            }
            return;
        }
        match &self.kind {
            NodeKind::Literal(_) | NodeKind::Context => {}
            NodeKind::Field { base, .. } => base.collect_context_paths(out),
            NodeKind::Index { base, index } => {
                base.collect_context_paths(out);
                index.collect_context_paths(out);
            }
            NodeKind::Not(x) | NodeKind::Neg(x) => x.collect_context_paths(out),
            NodeKind::Binary { lhs, rhs, .. } => {
                lhs.collect_context_paths(out);
                rhs.collect_context_paths(out);
            }
            NodeKind::Compare { first, rest } => {
                first.collect_context_paths(out);
                for (_, n) in rest {
                    n.collect_context_paths(out);
                }
            }
            NodeKind::And(items) | NodeKind::Or(items) => {
                for n in items {
                    n.collect_context_paths(out);
                }
            }
        }
    }
}

/// A static context path read by an expression, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextPath {
    /// The path below `context` (never empty): `context.a["b"]` gives `["a", "b"]`.
    pub segments: Vec<String>,
    /// Where the whole `context...` access is in the source.
    pub span: Span,
}

/// A top-level context field compared with a string literal: `context.category == 'spam'`
/// (`==` or `!=`, the field on either side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldComparison {
    /// The field (`category`).
    pub field: String,
    /// The string it is compared with.
    pub value: String,
    /// Where the string literal is in the source.
    pub span: Span,
}

impl Node {
    fn collect_string_comparisons(&self, out: &mut Vec<FieldComparison>) {
        match &self.kind {
            NodeKind::Literal(_) | NodeKind::Context => {}
            NodeKind::Field { base, .. } => base.collect_string_comparisons(out),
            NodeKind::Index { base, index } => {
                base.collect_string_comparisons(out);
                index.collect_string_comparisons(out);
            }
            NodeKind::Not(x) | NodeKind::Neg(x) => x.collect_string_comparisons(out),
            NodeKind::Binary { lhs, rhs, .. } => {
                lhs.collect_string_comparisons(out);
                rhs.collect_string_comparisons(out);
            }
            NodeKind::Compare { first, rest } => {
                let mut left = first.as_ref();
                for (op, right) in rest {
                    if matches!(op, CompareOp::Eq | CompareOp::Ne) {
                        for (a, b) in [(left, right), (right, left)] {
                            if let (Some(path), NodeKind::Literal(Literal::Str(value))) =
                                (a.static_context_path(), &b.kind)
                                && let [field] = path.as_slice()
                            {
                                out.push(FieldComparison {
                                    field: field.clone(),
                                    value: value.clone(),
                                    span: b.span,
                                });
                            }
                        }
                    }
                    left = right;
                }
                first.collect_string_comparisons(out);
                for (_, n) in rest {
                    n.collect_string_comparisons(out);
                }
            }
            NodeKind::And(items) | NodeKind::Or(items) => {
                for n in items {
                    n.collect_string_comparisons(out);
                }
            }
        }
    }

    /// Whether this expression compares `context.<field>` with `None` / `null` somewhere (the
    /// condition expects the field to be missing).
    fn compares_with_null(&self, field: &str) -> bool {
        match &self.kind {
            NodeKind::Literal(_) | NodeKind::Context => false,
            NodeKind::Field { base, .. } => base.compares_with_null(field),
            NodeKind::Index { base, index } => {
                base.compares_with_null(field) || index.compares_with_null(field)
            }
            NodeKind::Not(x) | NodeKind::Neg(x) => x.compares_with_null(field),
            NodeKind::Binary { lhs, rhs, .. } => {
                lhs.compares_with_null(field) || rhs.compares_with_null(field)
            }
            NodeKind::Compare { first, rest } => {
                let operands: Vec<&Node> = std::iter::once(first.as_ref())
                    .chain(rest.iter().map(|(_, n)| n))
                    .collect();
                let reads = operands.iter().any(|n| {
                    n.static_context_path()
                        .is_some_and(|p| p.first().map(String::as_str) == Some(field))
                });
                let null = operands
                    .iter()
                    .any(|n| matches!(n.kind, NodeKind::Literal(Literal::Null)));
                (reads && null) || operands.iter().any(|n| n.compares_with_null(field))
            }
            NodeKind::And(items) | NodeKind::Or(items) => {
                items.iter().any(|n| n.compares_with_null(field))
            }
        }
    }
}

/// A parsed condition expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    source: String,
    root: Node,
}

impl Expr {
    /// The root node. An empty (or whitespace-only) expression is the literal `true`.
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// The source text the expression was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The distinct static `context` paths the expression reads, in order of first
    /// appearance, for validation against the machine's known context fields.
    ///
    /// Attribute names and string-literal subscripts are path segments; a path stops at the
    /// first dynamic subscript (`context.a[context.i].b` reads `["a"]` and `["i"]`). Only the
    /// longest path of each access is listed (`context.a.b` gives `["a", "b"]`, not `["a"]`);
    /// bare `context` is not listed.
    pub fn context_paths(&self) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = Vec::new();
        for path in self.context_path_refs() {
            if !out.contains(&path.segments) {
                out.push(path.segments);
            }
        }
        out
    }

    /// Every static `context` path access with its location (see [`Expr::context_paths`]),
    /// in source order, duplicates included.
    pub fn context_path_refs(&self) -> Vec<ContextPath> {
        let mut out = Vec::new();
        self.root.collect_context_paths(&mut out);
        out
    }

    /// Every comparison of a top-level context field with a string literal, in source order.
    pub fn string_comparisons(&self) -> Vec<FieldComparison> {
        let mut out = Vec::new();
        self.root.collect_string_comparisons(&mut out);
        out
    }

    /// Whether the expression compares `context.<field>` (or a path below it) with `None`.
    pub fn compares_with_null(&self, field: &str) -> bool {
        self.root.compares_with_null(field)
    }
}

/// A syntax (or scope) error in an expression, located in its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprSyntaxError {
    /// What is wrong.
    pub message: String,
    /// Byte offset of the offending text in the expression source.
    pub offset: usize,
    /// Byte length of the offending text (0 at the end of the expression).
    pub len: usize,
    /// A suggestion, if there is one.
    pub help: Option<String>,
}

impl ExprSyntaxError {
    fn new(message: impl Into<String>, span: Span) -> Self {
        Self {
            message: message.into(),
            offset: span.offset,
            len: span.len,
            help: None,
        }
    }

    fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for ExprSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, " (help: {help})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ExprSyntaxError {}

/// Parses a condition. An empty or whitespace-only expression is always true.
///
/// Returns the first syntax or scope error (only `context` is in scope).
pub fn parse(src: &str) -> Result<Expr, ExprSyntaxError> {
    let root = if src.trim().is_empty() {
        Node::new(
            NodeKind::Literal(Literal::Bool(true)),
            Span::new(0, src.len()),
        )?
    } else {
        parser::Parser::new(src).parse_all()?
    };
    Ok(Expr {
        source: src.to_owned(),
        root,
    })
}
