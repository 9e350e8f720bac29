//! Draw a machine's states and transitions as Mermaid or Graphviz dot.

use crate::ir::MachineIr;
use std::fmt::Write;

/// Output format of [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    /// Mermaid `flowchart` (error routes dotted).
    Mermaid,
    /// Graphviz dot.
    Dot,
}

fn escape_dot(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn escape_mermaid(s: &str) -> String {
    s.replace('"', "#quot;").replace('\n', " ")
}

/// One edge of the graph.
struct Edge {
    from: usize,
    to: usize,
    /// The condition or the error route's label (`None`: an unconditional transition).
    label: Option<String>,
    /// An error route (drawn dashed).
    error: bool,
}

/// Transitions in order, then each state's error routes.
fn edges(m: &MachineIr) -> Vec<Edge> {
    let mut edges = Vec::new();
    for s in &m.states {
        for t in &s.transitions {
            let label = t.condition.as_ref().map(|(c, _)| c.clone());
            edges.push(Edge {
                from: s.index,
                to: t.to,
                label,
                error: false,
            });
        }
        for (ty, to) in &s.on_error {
            let label = if ty == "default" {
                "on_error".to_string()
            } else {
                format!("on_error: {ty}")
            };
            edges.push(Edge {
                from: s.index,
                to: *to,
                label: Some(label),
                error: true,
            });
        }
    }
    edges
}

/// Render the machine graph: transitions as solid edges labelled with their conditions, error
/// routes as dashed edges labelled `on_error` (with the error type when routed by type).
pub fn render(m: &MachineIr, format: GraphFormat) -> String {
    let mut out = String::new();
    let id = |i: usize| format!("s{i}");
    match format {
        GraphFormat::Mermaid => {
            let _ = writeln!(out, "flowchart LR");
            let _ = writeln!(out, "    __start(( )) --> {}", id(m.initial));
            for s in &m.states {
                let label = escape_mermaid(&s.name);
                if s.is_final {
                    let _ = writeln!(out, "    {}((\"{label}\"))", id(s.index));
                } else {
                    let _ = writeln!(out, "    {}[\"{label}\"]", id(s.index));
                }
            }
            for e in edges(m) {
                let arrow = if e.error { "-.->" } else { "-->" };
                let _ = match &e.label {
                    Some(l) => writeln!(
                        out,
                        "    {} {arrow}|\"{}\"| {}",
                        id(e.from),
                        escape_mermaid(l),
                        id(e.to)
                    ),
                    None => writeln!(out, "    {} {arrow} {}", id(e.from), id(e.to)),
                };
            }
        }
        GraphFormat::Dot => {
            let _ = writeln!(out, "digraph \"{}\" {{", escape_dot(&m.name));
            let _ = writeln!(out, "    rankdir=LR;");
            let _ = writeln!(out, "    __start [shape=point];");
            for s in &m.states {
                let shape = if s.is_final { "doublecircle" } else { "circle" };
                let _ = writeln!(
                    out,
                    "    {} [label=\"{}\", shape={shape}];",
                    id(s.index),
                    escape_dot(&s.name)
                );
            }
            let _ = writeln!(out, "    __start -> {};", id(m.initial));
            for e in edges(m) {
                let style = if e.error { ", style=dashed" } else { "" };
                let _ = match &e.label {
                    Some(l) => writeln!(
                        out,
                        "    {} -> {} [label=\"{}\"{style}];",
                        id(e.from),
                        id(e.to),
                        escape_dot(l)
                    ),
                    None => writeln!(out, "    {} -> {};", id(e.from), id(e.to)),
                };
            }
            let _ = writeln!(out, "}}");
        }
    }
    out
}
