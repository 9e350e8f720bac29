//! Draw a machine's states and transitions as Mermaid or Graphviz dot.

use crate::ir::MachineIr;
use std::fmt::Write;

/// Output format of [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    /// Mermaid `stateDiagram-v2`.
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

/// Render the machine graph: transitions as solid edges labelled with their conditions, error
/// routes as dashed edges labelled with the error type.
pub fn render(m: &MachineIr, format: GraphFormat) -> String {
    let error_label = |ty: &str| {
        if ty == "default" {
            "on_error".to_string()
        } else {
            format!("on_error: {ty}")
        }
    };
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
            for s in &m.states {
                for t in &s.transitions {
                    match &t.condition {
                        Some((c, _)) => {
                            let _ = writeln!(
                                out,
                                "    {} -->|\"{}\"| {}",
                                id(s.index),
                                escape_mermaid(c),
                                id(t.to)
                            );
                        }
                        None => {
                            let _ = writeln!(out, "    {} --> {}", id(s.index), id(t.to));
                        }
                    }
                }
                for (ty, to) in &s.on_error {
                    let _ = writeln!(
                        out,
                        "    {} -.->|\"{}\"| {}",
                        id(s.index),
                        escape_mermaid(&error_label(ty)),
                        id(*to)
                    );
                }
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
            for s in &m.states {
                for t in &s.transitions {
                    match &t.condition {
                        Some((c, _)) => {
                            let _ = writeln!(
                                out,
                                "    {} -> {} [label=\"{}\"];",
                                id(s.index),
                                id(t.to),
                                escape_dot(c)
                            );
                        }
                        None => {
                            let _ = writeln!(out, "    {} -> {};", id(s.index), id(t.to));
                        }
                    }
                }
                for (ty, to) in &s.on_error {
                    let _ = writeln!(
                        out,
                        "    {} -> {} [label=\"{}\", style=dashed];",
                        id(s.index),
                        id(*to),
                        escape_dot(&error_label(ty))
                    );
                }
            }
            let _ = writeln!(out, "}}");
        }
    }
    out
}
