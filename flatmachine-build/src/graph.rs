//! Draw a machine's states and transitions as Mermaid or Graphviz dot.
//!
//! Each state shows what it does — `agent: writer`, `action: charge`, `machine: review`,
//! `foreach → review`, `launch: archive`, `final` — in its label and its shape. With
//! [`render_all`], every child machine is drawn as a subgraph (a dot cluster, a Mermaid
//! `subgraph`) and each state that runs, loops over or launches it links to the child's initial
//! state with a dotted edge.

use crate::ir::{MachineIr, StateIr};
use crate::model::MachineField;
use std::fmt::Write;

/// Output format of [`render`] and [`render_all`].
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

/// What a state does, as shown in its label: one line per kind of work.
pub fn state_kinds(s: &StateIr) -> Vec<String> {
    let def = &s.def;
    let mut kinds = Vec::new();
    if let Some(action) = &def.action {
        kinds.push(format!("action: {action}"));
    }
    if let Some(launch) = &def.launch {
        kinds.push(format!("launch: {}", launch.names().join(", ")));
    }
    if let Some(machine) = &def.machine {
        let names = machine.names().join(", ");
        if def.foreach.is_some() {
            kinds.push(format!("foreach → {names}"));
        } else if matches!(machine, MachineField::Many(_)) {
            kinds.push(format!("machines: {names}"));
        } else {
            kinds.push(format!("machine: {names}"));
        }
    }
    if let Some(agent) = &def.agent {
        kinds.push(format!("agent: {agent}"));
    }
    if s.is_final {
        kinds.push("final".to_string());
    }
    kinds
}

/// The dominant kind, for the node's shape.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Plain,
    Final,
    Agent,
    Action,
    Machine,
    Launch,
}

fn shape(s: &StateIr) -> Shape {
    let def = &s.def;
    if s.is_final {
        Shape::Final
    } else if def.machine.is_some() {
        Shape::Machine
    } else if def.agent.is_some() {
        Shape::Agent
    } else if def.action.is_some() {
        Shape::Action
    } else if def.launch.is_some() {
        Shape::Launch
    } else {
        Shape::Plain
    }
}

/// The children a state starts, with how: `runs`, `foreach`, `launches`.
fn child_links(s: &StateIr) -> Vec<(String, &'static str)> {
    let def = &s.def;
    let mut out = Vec::new();
    if let Some(machine) = &def.machine {
        let how = if def.foreach.is_some() {
            "foreach"
        } else {
            "runs"
        };
        out.extend(machine.names().into_iter().map(|n| (n.to_string(), how)));
    }
    if let Some(launch) = &def.launch {
        out.extend(
            launch
                .names()
                .into_iter()
                .map(|n| (n.to_string(), "launches")),
        );
    }
    out
}

/// Render one machine: transitions as solid edges labelled with their conditions, error routes
/// as dashed edges labelled `on_error` (with the error type when routed by type), each state
/// labelled with what it does.
pub fn render(m: &MachineIr, format: GraphFormat) -> String {
    render_all(std::slice::from_ref(m), format)
}

/// Render a machine (`irs[0]`) with its child machines (the rest of `irs`, as `check` returns
/// them) as subgraphs, linked from the states that start them.
pub fn render_all(irs: &[MachineIr], format: GraphFormat) -> String {
    let mut out = String::new();
    let Some(root) = irs.first() else {
        return out;
    };
    // Which machines to draw: the root, then every child reachable from it, once each.
    let mut drawn: Vec<usize> = vec![0];
    let mut i = 0;
    while i < drawn.len() {
        let m = &irs[drawn[i]];
        for (_, module) in &m.children {
            if let Some(j) = module
                .as_ref()
                .and_then(|module| irs.iter().position(|ir| &ir.module == module))
                && !drawn.contains(&j)
            {
                drawn.push(j);
            }
        }
        i += 1;
    }
    let id = |machine: usize, state: usize| {
        if machine == 0 {
            format!("s{state}")
        } else {
            format!("m{machine}_s{state}")
        }
    };
    // Links from a state of machine `from` to the initial state of child `to`.
    let mut links: Vec<(String, String, &'static str)> = Vec::new();
    for &k in &drawn {
        let m = &irs[k];
        for s in &m.states {
            for (name, how) in child_links(s) {
                let module = m
                    .children
                    .iter()
                    .find(|(n, _)| *n == name)
                    .and_then(|(_, m)| m.as_ref());
                if let Some(j) =
                    module.and_then(|module| irs.iter().position(|ir| &ir.module == module))
                {
                    links.push((id(k, s.index), id(j, irs[j].initial), how));
                }
            }
        }
    }
    match format {
        GraphFormat::Mermaid => {
            let _ = writeln!(out, "flowchart LR");
            let _ = writeln!(out, "    __start(( )) --> {}", id(0, root.initial));
            for &k in &drawn {
                let m = &irs[k];
                let indent = if k == 0 {
                    "    "
                } else {
                    let _ = writeln!(
                        out,
                        "    subgraph m{k}[\"machine: {}\"]",
                        escape_mermaid(&m.name)
                    );
                    "        "
                };
                mermaid_machine(&mut out, m, indent, |s| id(k, s));
                if k != 0 {
                    let _ = writeln!(out, "    end");
                }
            }
            for (from, to, how) in &links {
                let _ = writeln!(out, "    {from} -.-|{how}| {to}");
            }
        }
        GraphFormat::Dot => {
            let _ = writeln!(out, "digraph \"{}\" {{", escape_dot(&root.name));
            let _ = writeln!(out, "    rankdir=LR;");
            let _ = writeln!(out, "    __start [shape=point];");
            for &k in &drawn {
                let m = &irs[k];
                if k == 0 {
                    dot_machine(&mut out, m, "    ", |s| id(k, s));
                } else {
                    let _ = writeln!(out, "    subgraph cluster_m{k} {{");
                    let _ = writeln!(out, "        label=\"machine: {}\";", escape_dot(&m.name));
                    dot_machine(&mut out, m, "        ", |s| id(k, s));
                    let _ = writeln!(out, "    }}");
                }
            }
            let _ = writeln!(out, "    __start -> {};", id(0, root.initial));
            for (from, to, how) in &links {
                let _ = writeln!(
                    out,
                    "    {from} -> {to} [label=\"{how}\", style=dotted, arrowhead=empty];"
                );
            }
            let _ = writeln!(out, "}}");
        }
    }
    out
}

fn mermaid_machine(out: &mut String, m: &MachineIr, indent: &str, id: impl Fn(usize) -> String) {
    for s in &m.states {
        let mut label = escape_mermaid(&s.name);
        for kind in state_kinds(s).iter().filter(|k| *k != "final") {
            label.push_str("<br/><i>");
            label.push_str(&escape_mermaid(kind));
            label.push_str("</i>");
        }
        let node = id(s.index);
        let _ = match shape(s) {
            Shape::Final => writeln!(out, "{indent}{node}((\"{label}\"))"),
            Shape::Agent => writeln!(out, "{indent}{node}([\"{label}\"])"),
            Shape::Machine => writeln!(out, "{indent}{node}[[\"{label}\"]]"),
            Shape::Launch => writeln!(out, "{indent}{node}>\"{label}\"]"),
            Shape::Action | Shape::Plain => writeln!(out, "{indent}{node}[\"{label}\"]"),
        };
    }
    for e in edges(m) {
        let arrow = if e.error { "-.->" } else { "-->" };
        let _ = match &e.label {
            Some(l) => writeln!(
                out,
                "{indent}{} {arrow}|\"{}\"| {}",
                id(e.from),
                escape_mermaid(l),
                id(e.to)
            ),
            None => writeln!(out, "{indent}{} {arrow} {}", id(e.from), id(e.to)),
        };
    }
}

fn dot_machine(out: &mut String, m: &MachineIr, indent: &str, id: impl Fn(usize) -> String) {
    for s in &m.states {
        let mut label = escape_dot(&s.name);
        for kind in state_kinds(s).iter().filter(|k| *k != "final") {
            label.push_str("\\n");
            label.push_str(&escape_dot(kind));
        }
        let shape = match shape(s) {
            Shape::Final => "doublecircle",
            Shape::Agent => "box, style=rounded",
            Shape::Action => "box",
            Shape::Machine => "box3d",
            Shape::Launch => "cds",
            Shape::Plain => "circle",
        };
        let _ = writeln!(
            out,
            "{indent}{} [label=\"{label}\", shape={shape}];",
            id(s.index)
        );
    }
    for e in edges(m) {
        let style = if e.error { ", style=dashed" } else { "" };
        let _ = match &e.label {
            Some(l) => writeln!(
                out,
                "{indent}{} -> {} [label=\"{}\"{style}];",
                id(e.from),
                id(e.to),
                escape_dot(l)
            ),
            None => writeln!(out, "{indent}{} -> {};", id(e.from), id(e.to)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn irs(yaml: &[(&str, &str)]) -> (tempfile::TempDir, Vec<MachineIr>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in yaml {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let checked = crate::check(&dir.path().join(yaml[0].0), None);
        assert!(!checked.has_errors(), "{}", checked.render(false));
        (dir, checked.irs.into_iter().flatten().collect())
    }

    const PARENT: &str = "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: parent\n  agents:\n    writer: { type: custom }\n  machines:\n    child: ./child.yml\n  states:\n    start:\n      type: initial\n      action: load\n      transitions:\n        - to: each\n    each:\n      foreach: \"{{ context.items }}\"\n      machine: child\n      transitions:\n        - to: write\n    write:\n      agent: writer\n      launch: child\n      transitions:\n        - to: done\n    done:\n      type: final\n";
    const CHILD: &str = "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  name: child\n  states:\n    go:\n      type: initial\n      transitions:\n        - to: end\n    end:\n      type: final\n";

    #[test]
    fn kinds_label_and_shape_the_states() {
        let (_d, irs) = irs(&[("p.yml", PARENT), ("child.yml", CHILD)]);
        let dot = render(&irs[0], GraphFormat::Dot);
        assert!(
            dot.contains("s0 [label=\"start\\naction: load\", shape=box];"),
            "{dot}"
        );
        assert!(
            dot.contains("s1 [label=\"each\\nforeach → child\", shape=box3d];"),
            "{dot}"
        );
        assert!(
            dot.contains(
                "s2 [label=\"write\\nlaunch: child\\nagent: writer\", shape=box, style=rounded];"
            ),
            "{dot}"
        );
        assert!(
            dot.contains("s3 [label=\"done\", shape=doublecircle];"),
            "{dot}"
        );
        // One machine alone: no child drawn.
        assert!(!dot.contains("cluster"), "{dot}");
        let mermaid = render(&irs[0], GraphFormat::Mermaid);
        assert!(
            mermaid.contains("s1[[\"each<br/><i>foreach → child</i>\"]]"),
            "{mermaid}"
        );
        assert!(
            mermaid.contains("s2([\"write<br/><i>launch: child</i><br/><i>agent: writer</i>\"])"),
            "{mermaid}"
        );
    }

    #[test]
    fn children_are_subgraphs_linked_from_their_callers() {
        let (_d, irs) = irs(&[("p.yml", PARENT), ("child.yml", CHILD)]);
        let dot = render_all(&irs, GraphFormat::Dot);
        assert!(
            dot.contains("subgraph cluster_m1 {\n        label=\"machine: child\";"),
            "{dot}"
        );
        assert!(
            dot.contains("        m1_s0 [label=\"go\", shape=circle];"),
            "{dot}"
        );
        assert!(dot.contains("        m1_s0 -> m1_s1;"), "{dot}");
        assert!(
            dot.contains("s1 -> m1_s0 [label=\"foreach\", style=dotted, arrowhead=empty];"),
            "{dot}"
        );
        assert!(
            dot.contains("s2 -> m1_s0 [label=\"launches\", style=dotted, arrowhead=empty];"),
            "{dot}"
        );
        // The child is drawn once however many states start it.
        assert_eq!(dot.matches("subgraph").count(), 1, "{dot}");
        let mermaid = render_all(&irs, GraphFormat::Mermaid);
        assert!(
            mermaid.contains("    subgraph m1[\"machine: child\"]\n        m1_s0[\"go\"]"),
            "{mermaid}"
        );
        assert!(mermaid.contains("    s1 -.-|foreach| m1_s0"), "{mermaid}");
    }
}
