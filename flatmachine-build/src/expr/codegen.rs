//! Rust code generation for conditions.
//!
//! Every value-producing node compiles to an expression of type
//! `flatmachine_runtime::expr::Val<'_>` (a `Cow` of a JSON value that borrows from the context
//! for plain lookups); comparisons, `and`, `or` and `not` compile to plain Rust `bool`s, so
//! `and`/`or` short-circuit with `&&`/`||`. Fallible steps use `?`; when there is one, the
//! condition becomes a small local function so the `?` has a `Result` to return into.

use proc_macro2::{Ident, Literal as LitToken, Span as TokSpan, TokenStream};
use quote::{format_ident, quote};

use super::{BinaryOp, CompareOp, Expr, Literal, Node, NodeKind};

/// Rust tokens for an expression of type `Result<bool, #ex::ExprError>` that evaluates
/// the condition's truthiness against `#ctx: &#rt::Context`. An error names the condition
/// (`in expression `...`: ...`).
///
/// `rt` is the path of the runtime crate (normally `::flatmachine_runtime`). The output is meant
/// to be pretty-printed into user-visible code: context lookups borrow (no cloning), `and`/`or`
/// short-circuit, and infallible conditions are a plain `#ex::ok(...)`.
pub fn condition_tokens(expr: &Expr, rt: &TokenStream, ctx: &Ident) -> TokenStream {
    let ctx_name = ctx.to_string();
    let fn_name = if ctx_name == "condition" {
        "condition_fn"
    } else {
        "condition"
    };
    let var_prefix = if ctx_name.starts_with('v') {
        "operand"
    } else {
        "v"
    };
    let ex = quote!(#rt::expr);
    let mut generator = Generator {
        ex: &ex,
        ctx,
        fallible: false,
        uses_ctx: false,
        next_var: 0,
        var_prefix,
    };

    let code = generator.bool_expr(expr.root());
    let (tokens, can_fail) = match code.result {
        // A lone ordering comparison is already a `Result<bool>`: no `Ok(...?)` around it.
        Some((call, operands_fallible)) => {
            generator.fallible = operands_fallible;
            (generator.wrap(fn_name, call, true), true)
        }
        None => (
            generator.wrap(fn_name, code.tokens, false),
            generator.fallible,
        ),
    };
    if !can_fail {
        return tokens;
    }
    // A run-time error names the condition it came from.
    let src = expr.source();
    quote!(#tokens.map_err(|e| e.in_expression(#src)))
}

/// The body of a function `fn(#ctx: &#ex::Context) -> #ex::Result<bool>` that evaluates the
/// condition's truthiness, where `ex` is the path of the runtime's `expr` module (generated
/// machines import it as `expr`). Unlike [`condition_tokens`] the errors do not name the
/// condition: the runtime adds that (`machine::Guard::eval`). Also returns whether the body
/// reads `#ctx` (when it does not, the parameter should be named `_`).
pub fn condition_fn_body(expr: &Expr, ex: &TokenStream, ctx: &Ident) -> (TokenStream, bool) {
    let mut generator = Generator {
        ex,
        ctx,
        fallible: false,
        uses_ctx: false,
        next_var: 0,
        var_prefix: if ctx.to_string().starts_with('v') {
            "operand"
        } else {
            "v"
        },
    };
    let code = generator.bool_expr(expr.root());
    let body = match code.result {
        // A lone ordering comparison is already a `Result<bool>`.
        Some((call, _)) => call,
        None => {
            let tokens = code.tokens;
            quote!(Ok(#tokens))
        }
    };
    (body, generator.uses_ctx)
}

/// The runtime function for an ordering operator (`None` for `==` / `!=`, which cannot fail).
fn ordering_fn(op: CompareOp) -> Option<TokenStream> {
    match op {
        CompareOp::Eq | CompareOp::Ne => None,
        CompareOp::Lt => Some(quote!(lt)),
        CompareOp::Le => Some(quote!(le)),
        CompareOp::Gt => Some(quote!(gt)),
        CompareOp::Ge => Some(quote!(ge)),
    }
}

/// A generated boolean expression.
struct BoolCode {
    tokens: TokenStream,
    prec: Prec,
    /// The value, when it is known at build time (literals, `not` of literals, ...).
    constant: Option<bool>,
    /// Whether evaluating it can fail (it contains a `?`).
    fallible: bool,
    /// For a lone ordering comparison `tokens` is `#call?`: this is the `Result<bool>` call,
    /// and whether its operands can fail.
    result: Option<(TokenStream, bool)>,
}

impl BoolCode {
    fn constant(value: bool) -> Self {
        Self {
            tokens: quote!(#value),
            prec: Prec::Atom,
            constant: Some(value),
            fallible: false,
            result: None,
        }
    }

    fn atom(tokens: TokenStream, fallible: bool) -> Self {
        Self {
            tokens,
            prec: Prec::Atom,
            constant: None,
            fallible,
            result: None,
        }
    }

    /// The tokens, parenthesised if they bind looser than `min`.
    fn operand(self, min: Prec) -> TokenStream {
        let tokens = self.tokens;
        if self.prec < min {
            quote!((#tokens))
        } else {
            tokens
        }
    }
}

/// How tightly a generated boolean expression binds, to parenthesise correctly.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Prec {
    Or,
    And,
    /// A call, block, literal or `!x`: never needs parentheses.
    Atom,
}

struct Generator<'a> {
    /// Path of the runtime's `expr` module.
    ex: &'a TokenStream,
    ctx: &'a Ident,
    /// Whether any generated step uses `?`.
    fallible: bool,
    /// Whether the generated code reads the context.
    uses_ctx: bool,
    next_var: usize,
    var_prefix: &'static str,
}

impl Generator<'_> {
    fn fresh_var(&mut self) -> Ident {
        let var = format_ident!("{}{}", self.var_prefix, self.next_var);
        self.next_var += 1;
        var
    }

    /// The final expression: `body` is a `bool` (or, if `is_result`, already a `Result<bool>`);
    /// when the code uses `?` it goes in a local function that returns the `Result`.
    fn wrap(&self, fn_name: &str, body: TokenStream, is_result: bool) -> TokenStream {
        let (ex, ctx) = (self.ex, self.ctx);
        let result = if is_result {
            body
        } else if self.fallible {
            quote!(Ok(#body))
        } else {
            quote!(#ex::ok(#body))
        };
        if !self.fallible {
            return result;
        }
        let fn_ident = Ident::new(fn_name, TokSpan::call_site());
        let param = if self.uses_ctx {
            quote!(#ctx)
        } else {
            quote!(_)
        };
        quote! {
            {
                fn #fn_ident(#param: &#ex::Context) -> #ex::Result<bool> {
                    #result
                }
                #fn_ident(#ctx)
            }
        }
    }

    /// Runs `f`, reporting whether the code it generated uses `?`.
    fn tracking<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> (T, bool) {
        let before = std::mem::replace(&mut self.fallible, false);
        let out = f(self);
        let fallible = self.fallible;
        self.fallible |= before;
        (out, fallible)
    }

    /// A Rust `bool` expression for the node's truthiness.
    fn bool_expr(&mut self, node: &Node) -> BoolCode {
        let ex = self.ex;
        match &node.kind {
            NodeKind::Literal(lit) => BoolCode::constant(match lit {
                Literal::Null => false,
                Literal::Bool(b) => *b,
                Literal::Int(i) => *i != 0,
                Literal::Float(f) => *f != 0.0,
                Literal::Str(s) => !s.is_empty(),
            }),
            NodeKind::Not(operand) => {
                if let NodeKind::Not(inner) = &operand.kind {
                    // `not not x` is the truthiness of `x`.
                    return self.bool_expr(inner);
                }
                let code = self.bool_expr(operand);
                if let Some(value) = code.constant {
                    return BoolCode::constant(!value);
                }
                let fallible = code.fallible;
                let tokens = code.operand(Prec::Atom);
                BoolCode::atom(quote!(!#tokens), fallible)
            }
            NodeKind::And(items) => self.junction(items, false),
            NodeKind::Or(items) => self.junction(items, true),
            NodeKind::Compare { first, rest } => {
                if let [(op, rhs)] = rest.as_slice()
                    && let Some(func) = ordering_fn(*op)
                {
                    let ((lhs, rhs), operands_fallible) =
                        self.tracking(|g| (g.value_expr(first), g.value_expr(rhs)));
                    self.fallible = true;
                    let call = quote!(#ex::#func(&#lhs, &#rhs));
                    return BoolCode {
                        result: Some((call.clone(), operands_fallible)),
                        ..BoolCode::atom(quote!(#call?), true)
                    };
                }
                let (tokens, fallible) = self.tracking(|g| g.compare(first, rest));
                BoolCode::atom(tokens, fallible)
            }
            _ => {
                let (value, fallible) = self.tracking(|g| g.value_expr(node));
                BoolCode::atom(quote!(#ex::truthy(&#value)), fallible)
            }
        }
    }

    /// `a and b and ...` (`is_or == false`) or `a or b or ...` (`is_or == true`).
    ///
    /// Build-time constants are folded without changing what is evaluated: a constant that
    /// cannot decide the result is dropped; one that decides it ends the chain (the operands
    /// before it are still evaluated when they can fail, for their errors).
    fn junction(&mut self, items: &[Node], is_or: bool) -> BoolCode {
        let deciding = is_or;
        let mut parts = Vec::new();
        let mut decided = false;
        for item in items {
            let code = self.bool_expr(item);
            match code.constant {
                Some(value) if value == deciding => {
                    decided = true;
                    break;
                }
                Some(_) => {}
                None => parts.push(code),
            }
        }
        let prec = if is_or { Prec::Or } else { Prec::And };
        let join = |parts: Vec<BoolCode>| {
            // Operands are parenthesised unless atomic (`&&` inside `||` too, for readability).
            let parts: Vec<_> = parts.into_iter().map(|p| p.operand(Prec::Atom)).collect();
            if is_or {
                quote!(#(#parts)||*)
            } else {
                quote!(#(#parts)&&*)
            }
        };
        let fallible = parts.iter().any(|p| p.fallible);
        if decided {
            if !fallible {
                return BoolCode::constant(deciding);
            }
            let evaluated = if parts.len() == 1 {
                parts.remove(0).tokens
            } else {
                join(parts)
            };
            return BoolCode::atom(
                quote!({
                    let _ = #evaluated;
                    #deciding
                }),
                true,
            );
        }
        match parts.len() {
            0 => BoolCode::constant(!deciding),
            1 => parts.pop().unwrap_or_else(|| BoolCode::constant(!deciding)),
            _ => BoolCode {
                tokens: join(parts),
                prec,
                constant: None,
                fallible,
                result: None,
            },
        }
    }

    /// A single comparison between two already-generated operands.
    fn compare_op(&mut self, op: CompareOp, lhs: &TokenStream, rhs: &TokenStream) -> TokenStream {
        let ex = self.ex;
        match op {
            CompareOp::Eq => quote!(#ex::eq(&#lhs, &#rhs)),
            CompareOp::Ne => quote!(#ex::ne(&#lhs, &#rhs)),
            CompareOp::Lt | CompareOp::Le | CompareOp::Gt | CompareOp::Ge => {
                self.fallible = true;
                let func = ordering_fn(op);
                quote!(#ex::#func(&#lhs, &#rhs)?)
            }
        }
    }

    /// A comparison; a chain `a < b < c` evaluates each operand once and stops at the first
    /// false link:
    ///
    /// ```text
    /// { let v0 = a; let v1 = b; lt(&v0, &v1)? && { let v2 = c; lt(&v1, &v2)? } }
    /// ```
    fn compare(&mut self, first: &Node, rest: &[(CompareOp, Node)]) -> TokenStream {
        if let [(op, rhs)] = rest {
            let lhs = self.value_expr(first);
            let rhs = self.value_expr(rhs);
            return self.compare_op(*op, &lhs, &rhs);
        }
        let first_value = self.value_expr(first);
        let first_var = self.fresh_var();
        let chain = self.chain_links(&first_var, rest);
        quote!({
            let #first_var = #first_value;
            #chain
        })
    }

    /// `let vN = rhs; op(&prev, &vN)? && { ...rest }` for the remaining links of a chain.
    fn chain_links(&mut self, prev: &Ident, rest: &[(CompareOp, Node)]) -> TokenStream {
        let Some(((op, rhs), tail)) = rest.split_first() else {
            return quote!(true);
        };
        let rhs_value = self.value_expr(rhs);
        let var = self.fresh_var();
        let prev_tokens = quote!(#prev);
        let var_tokens = quote!(#var);
        let test = self.compare_op(*op, &prev_tokens, &var_tokens);
        if tail.is_empty() {
            quote! {
                let #var = #rhs_value;
                #test
            }
        } else {
            let rest = self.chain_links(&var, tail);
            quote! {
                let #var = #rhs_value;
                #test && { #rest }
            }
        }
    }

    /// A Rust expression of type `Val<'_>` for the node's value.
    fn value_expr(&mut self, node: &Node) -> TokenStream {
        let ex = self.ex;
        let ctx = self.ctx;
        if let Some(path) = attribute_path(node) {
            // `context` and `context.a.b`: borrow straight from the context.
            self.uses_ctx = true;
            if path.is_empty() {
                return quote!(#ex::context(#ctx));
            }
            return quote!(#ex::path(#ctx, &[#(#path),*]));
        }
        match &node.kind {
            NodeKind::Literal(lit) => literal_tokens(ex, lit),
            NodeKind::Context => quote!(#ex::context(#ctx)),
            NodeKind::Field { base, name, .. } => {
                let base = self.value_expr(base);
                quote!(#ex::field(#base, #name))
            }
            NodeKind::Index { base, index } => {
                self.fallible = true;
                if base.kind == NodeKind::Context {
                    self.uses_ctx = true;
                    let index = self.value_expr(index);
                    quote!(#ex::context_index(#ctx, &#index)?)
                } else {
                    let base = self.value_expr(base);
                    let index = self.value_expr(index);
                    quote!(#ex::index(#base, &#index)?)
                }
            }
            NodeKind::Neg(operand) => {
                self.fallible = true;
                let operand = self.value_expr(operand);
                quote!(#ex::neg(&#operand)?)
            }
            NodeKind::Binary { op, lhs, rhs } => {
                self.fallible = true;
                let func = match op {
                    BinaryOp::Add => quote!(add),
                    BinaryOp::Sub => quote!(sub),
                    BinaryOp::Mul => quote!(mul),
                    BinaryOp::Div => quote!(div),
                };
                let lhs = self.value_expr(lhs);
                let rhs = self.value_expr(rhs);
                quote!(#ex::#func(&#lhs, &#rhs)?)
            }
            NodeKind::Not(_) | NodeKind::Compare { .. } | NodeKind::And(_) | NodeKind::Or(_) => {
                let tokens = self.bool_expr(node).tokens;
                quote!(#ex::boolean(#tokens))
            }
        }
    }
}

/// `context.a.b.c` (attribute accesses only) as `["a", "b", "c"]`.
fn attribute_path(node: &Node) -> Option<Vec<&str>> {
    match &node.kind {
        NodeKind::Context => Some(Vec::new()),
        NodeKind::Field { base, name, .. } => {
            let mut path = attribute_path(base)?;
            path.push(name);
            Some(path)
        }
        _ => None,
    }
}

fn literal_tokens(ex: &TokenStream, lit: &Literal) -> TokenStream {
    match lit {
        Literal::Null => quote!(#ex::null()),
        Literal::Bool(b) => quote!(#ex::boolean(#b)),
        Literal::Int(i) => {
            let value = if *i == i64::MIN {
                quote!(i64::MIN)
            } else if *i < 0 {
                let magnitude = LitToken::u64_unsuffixed(i.unsigned_abs());
                quote!(-#magnitude)
            } else {
                let magnitude = LitToken::u64_unsuffixed(i.unsigned_abs());
                quote!(#magnitude)
            };
            quote!(#ex::int(#value))
        }
        Literal::Float(f) => {
            // `{:?}` always prints a valid Rust float literal for a finite f64 (`1.0`, `1e300`).
            let magnitude = syn::LitFloat::new(&format!("{:?}", f.abs()), TokSpan::call_site());
            let value = if f.is_sign_negative() {
                quote!(-#magnitude)
            } else {
                quote!(#magnitude)
            };
            quote!(#ex::float(#value))
        }
        Literal::Str(s) => {
            let lit = LitToken::string(s);
            quote!(#ex::string(#lit))
        }
    }
}
