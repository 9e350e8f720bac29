//! Semantic checks over a loaded [`Project`] and lowering to the [`ir`](crate::ir) the code
//! generator consumes. Every problem is collected in one pass; nothing stops at the first.

use crate::agents::{ModelIr, PROMPT_SCOPE, ProfileSet};
use crate::diagnostic::{Diagnostic, Diagnostics, did_you_mean};
use crate::expr;
use crate::ir::{
    AgentIr, AgentKindIr, Condition, FlatAgentIr, MachineIr, Scope, StateIr, TemplateIr,
    TransitionIr,
};
use crate::loader::{AgentUnit, MachineId, MachineUnit, Origin, ProfilesId, Project};
use crate::model::AgentWrapper;
use crate::model::{ExecutionType, ExpressionEngine, OnError, StateDefinition, StateType};
use crate::source::Span;
use crate::yaml::{Node, NodeKind, PathSeg};
use indexmap::IndexMap;
use std::collections::{BTreeSet, HashSet, VecDeque};

mod agents;
mod graph;
mod states;
mod templates;
mod tools;
mod typed_io;

use templates::collect_strings;
use tools::{TOOL_LOOP_OUTPUT, lower_mcp};

fn k(s: &str) -> PathSeg {
    PathSeg::Key(s.to_string())
}

/// Check every machine in the project and lower each to IR. The IR list is indexed like
/// `project.machines`; an entry is `None` when that machine could not be lowered.
pub fn analyze(project: &Project) -> (Vec<Option<MachineIr>>, Diagnostics) {
    analyze_with_tools(project, &[])
}

/// [`analyze`], knowing the names of the Rust tools the application registers (they count as
/// tools of every flatagent in `tool_loop` states, may be named in `allowed_tools` /
/// `denied_tools`, and must not share a name with an inline tool).
pub fn analyze_with_tools(
    project: &Project,
    rust_tools: &[String],
) -> (Vec<Option<MachineIr>>, Diagnostics) {
    let mut diags = Diagnostics::new();
    let mut irs = Vec::new();
    let module_names = module_names(project);
    for (id, unit) in project.machines.iter().enumerate() {
        let mut cx = Cx {
            project,
            unit,
            diags: &mut diags,
            rust_tools,
        };
        irs.push(cx.machine(id, &module_names));
    }
    (irs, diags)
}

/// Check and lower the single agent of a project made by [`crate::loader::load_agent_file`].
pub fn analyze_agent(project: &Project) -> (Option<AgentIr>, Diagnostics) {
    let mut diags = Diagnostics::new();
    let Some(unit) = project.machines.first() else {
        return (None, diags);
    };
    let mut cx = Cx {
        project,
        unit,
        diags: &mut diags,
        rust_tools: &[],
    };
    let agent = cx.agents().into_iter().next();
    (agent, diags)
}

/// A unique snake_case module name for every machine.
fn module_names(project: &Project) -> Vec<String> {
    let mut used = HashSet::new();
    let mut out = Vec::new();
    for unit in &project.machines {
        let base = unit
            .config
            .as_ref()
            .and_then(|c| c.data.name.clone())
            .or_else(|| {
                let f = project.db.file(unit.origin.file);
                f.path.file_stem().map(|s| s.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "machine".to_string());
        let mut name = crate::ir::snake_ident(&base);
        let mut n = 2;
        while !used.insert(name.clone()) {
            name = format!("{}_{n}", crate::ir::snake_ident(&base));
            n += 1;
        }
        out.push(name);
    }
    out
}

/// Backend names the runtime provides, per kind (mirrors `BackendsSpec::AVAILABLE` in
/// flatmachine-runtime).
const BACKENDS: &[(&str, &[&str])] = &[
    ("persistence", &["memory", "local", "sqlite", "redis"]),
    ("locking", &["none", "local", "redis"]),
    ("results", &["memory", "redis"]),
    ("registration", &["memory", "sqlite", "redis"]),
    ("work", &["memory", "sqlite", "redis"]),
    ("signal", &["memory", "sqlite", "redis"]),
];

struct Cx<'a> {
    project: &'a Project,
    unit: &'a MachineUnit,
    diags: &'a mut Diagnostics,
    rust_tools: &'a [String],
}

impl Cx<'_> {
    fn origin(&self) -> &Origin {
        &self.unit.origin
    }

    fn node(&self, rel: &[PathSeg]) -> Option<&Node> {
        self.project.node(self.origin(), rel)
    }

    fn err(&mut self, msg: impl Into<String>, rel: &[PathSeg]) -> &mut Diagnostic {
        let span = self.project.span(self.origin(), rel);
        self.diags.push(Diagnostic::error(msg, Some(span)));
        self.last()
    }

    fn warn(&mut self, msg: impl Into<String>, rel: &[PathSeg]) -> &mut Diagnostic {
        let span = self.project.span(self.origin(), rel);
        self.diags.push(Diagnostic::warning(msg, Some(span)));
        self.last()
    }

    fn err_key(&mut self, msg: impl Into<String>, rel: &[PathSeg]) -> &mut Diagnostic {
        let span = self.project.key_span(self.origin(), rel);
        self.diags.push(Diagnostic::error(msg, Some(span)));
        self.last()
    }

    fn warn_key(&mut self, msg: impl Into<String>, rel: &[PathSeg]) -> &mut Diagnostic {
        let span = self.project.key_span(self.origin(), rel);
        self.diags.push(Diagnostic::warning(msg, Some(span)));
        self.last()
    }

    /// `settings.backends`: every name must be one the runtime provides.
    fn backends(&mut self, b: &crate::model::BackendConfig) {
        let chosen = [
            ("persistence", &b.persistence),
            ("locking", &b.locking),
            ("results", &b.results),
            ("registration", &b.registration),
            ("work", &b.work),
            ("signal", &b.signal),
        ];
        for (kind, name) in chosen {
            let Some(name) = name else { continue };
            let available = BACKENDS
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, v)| *v)
                .unwrap_or(&[]);
            if !available.contains(&name.as_str()) {
                let rel = [k("data"), k("settings"), k("backends"), k(kind)];
                let d = self.err(format!("unknown {kind} backend `{name}`"), &rel);
                d.label = Some(format!("available: {}", available.join(", ")));
                d.help.extend(did_you_mean(name, available.iter().copied()));
            }
        }
        if let Some(path) = &b.sqlite_path
            && path.trim().is_empty()
        {
            let rel = [k("data"), k("settings"), k("backends"), k("sqlite_path")];
            self.err("`sqlite_path` is empty", &rel);
        }
    }

    fn last(&mut self) -> &mut Diagnostic {
        // Diagnostics has no last_mut; keep a local accessor.
        self.diags.last_mut().expect("just pushed")
    }

    fn machine(&mut self, id: MachineId, module_names: &[String]) -> Option<MachineIr> {
        let cfg = self.unit.config.as_ref()?;
        let data = &cfg.data;
        let states_rel = [k("data"), k("states")];
        if data.states.is_empty() {
            self.err("the machine has no states", &states_rel)
                .help
                .push("add at least one state under `data.states`".into());
            return None;
        }
        let names: Vec<&str> = data.states.keys().map(String::as_str).collect();
        let index: IndexMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();

        // Initial state.
        let initials: Vec<&str> = data
            .states
            .iter()
            .filter(|(_, s)| s.kind == Some(StateType::Initial))
            .map(|(n, _)| n.as_str())
            .collect();
        let initial = match initials.as_slice() {
            [one] => index[one],
            [] => {
                let fallback = if index.contains_key("start") {
                    "start"
                } else {
                    names[0]
                };
                self.warn("no state is marked `type: initial`", &states_rel)
                    .help
                    .push(format!("`{fallback}` is used as the initial state; mark it `type: initial` to make this explicit"));
                index[fallback]
            }
            [first, rest @ ..] => {
                for other in rest {
                    let rel = [k("data"), k("states"), k(other), k("type")];
                    self.err(format!("more than one initial state: `{first}` and `{other}`"), &rel)
                        .help
                        .push("a machine starts in exactly one state; keep `type: initial` on one of them".into());
                }
                index[first]
            }
        };

        let engine = data.expression_engine.unwrap_or(ExpressionEngine::Simple);
        let agents: Vec<&str> = data
            .agents
            .iter()
            .flatten()
            .map(|(n, _)| n.as_str())
            .collect();
        let machines: Vec<&str> = data
            .machines
            .iter()
            .flatten()
            .map(|(n, _)| n.as_str())
            .collect();

        // Initial context: templates over `input`.
        let context = data.context.as_ref().map(|c| {
            let v = serde_json::Value::Object(c.clone());
            self.templates(&[k("data"), k("context")], v, &Scope::new(&["input"]))
        });
        let hooks_args = data.hooks.as_ref().and_then(|h| h.args.as_ref()).map(|a| {
            let v = serde_json::Value::Object(a.clone());
            self.templates(
                &[k("data"), k("hooks"), k("args")],
                v,
                &Scope::new(&["input"]),
            )
        });

        let mut states = Vec::new();
        let mut actions = BTreeSet::new();
        let state_names: Vec<&str> = index.keys().copied().collect();
        for (i, (name, def)) in data.states.iter().enumerate() {
            let rel = vec![k("data"), k("states"), k(name)];
            if let Some(a) = &def.action {
                actions.insert(a.clone());
            }
            states.push(self.state(
                i,
                name,
                def,
                &rel,
                (&index, &state_names),
                &agents,
                &machines,
                engine,
            ));
        }
        let variants = crate::ir::variant_names(&names);
        for (s, v) in states.iter_mut().zip(variants) {
            s.variant = v;
        }

        self.graph_checks(&states, initial);
        self.typed_io(data);
        let agent_list = self.agents();
        self.check_tool_loops(&states, &agent_list);
        // Context keys read but never set, values a key never has, agent inputs not passed.
        self.diags
            .extend(crate::dataflow::check(self.project, self.unit, &states));
        self.diags
            .extend(crate::dataflow::agent_inputs(self.project, self.unit));
        let backends = data
            .settings
            .as_ref()
            .and_then(|s| s.backends.clone())
            .inspect(|b| self.backends(b));

        let children = data
            .machines
            .iter()
            .flatten()
            .map(|(n, _)| {
                (
                    n.clone(),
                    self.unit
                        .machines
                        .get(n)
                        .copied()
                        .flatten()
                        .map(|cid| module_names[cid].clone()),
                )
            })
            .collect();
        let mut ir = MachineIr {
            id,
            module: module_names[id].clone(),
            name: data
                .name
                .clone()
                .unwrap_or_else(|| "unnamed-machine".to_string()),
            spec_version: cfg.spec_version.clone(),
            source: self.project.db.file(self.origin().file).display.clone(),
            initial,
            states,
            context,
            max_steps: data.settings.as_ref().and_then(|s| s.max_steps),
            max_concurrency: data.settings.as_ref().and_then(|s| s.max_concurrency),
            heartbeat_interval: data.settings.as_ref().and_then(|s| s.heartbeat_interval),
            job_lease_seconds: data.settings.as_ref().and_then(|s| s.job_lease_seconds),
            persistence: data.persistence.clone(),
            hooks: data.hooks.as_ref().map(|h| (h.class.clone(), hooks_args)),
            backends,
            children,
            agents: agent_list,
            actions,
            engine,
            rust_tools: self.rust_tools.to_vec(),
            config_hash: String::new(),
            input: data.input.clone(),
            output: data.output.clone(),
        };
        ir.config_hash = crate::fingerprint::shape_hash(&ir);
        Some(ir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str) -> (Project, Vec<Option<MachineIr>>, Diagnostics) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.yml");
        std::fs::write(&p, yaml).unwrap();
        let project = crate::loader::load(&p);
        let (irs, d) = analyze(&project);
        (project, irs, d)
    }

    #[test]
    fn misspelt_target_is_an_error_with_a_hint() {
        let (_, _, d) = run(
            "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  states:\n    start:\n      type: initial\n      transitions:\n        - to: reviw\n    review:\n      type: final\n",
        );
        let e: Vec<_> = d.errors().collect();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].help, vec!["did you mean `review`?".to_string()]);
    }

    #[test]
    fn a_waiting_state_cannot_also_run_a_tool_loop() {
        let (_, _, d) = run(
            "spec: flatmachine\nspec_version: \"1.0.0\"\ndata:\n  states:\n    start:\n      type: initial\n      wait_for: approvals\n      tool_loop: true\n      transitions:\n        - to: done\n    done:\n      type: final\n",
        );
        let messages: Vec<String> = d.errors().map(|e| e.message.clone()).collect();
        assert!(
            messages
                .iter()
                .any(|m| m.contains("waits for a signal") && m.contains("`tool_loop`")),
            "{messages:?}"
        );
    }
}
