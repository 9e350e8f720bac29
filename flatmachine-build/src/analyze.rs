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

mod typed_io;

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

    #[allow(clippy::too_many_arguments)]
    fn state(
        &mut self,
        i: usize,
        name: &str,
        def: &StateDefinition,
        rel: &[PathSeg],
        (index, state_names): (&IndexMap<&str, usize>, &[&str]),
        agents: &[&str],
        machines: &[&str],
        engine: ExpressionEngine,
    ) -> StateIr {
        let at = |extra: &[PathSeg]| -> Vec<PathSeg> {
            let mut p = rel.to_vec();
            p.extend_from_slice(extra);
            p
        };
        let is_final = def.kind == Some(StateType::Final);

        // References to agents, machines and launches.
        if let Some(agent) = &def.agent
            && !agents.contains(&agent.as_str())
        {
            let d = self.err(
                format!("state `{name}` uses agent `{agent}`, which is not declared"),
                &at(&[k("agent")]),
            );
            d.help.extend(did_you_mean(agent, agents.iter().copied()));
            if agent.ends_with(".yml") || agent.ends_with(".yaml") {
                d.help.push(format!("name the file under `data.agents` (e.g. `my_agent: {agent}`) and use that name here"));
            } else if agents.is_empty() {
                d.help.push("declare it under `data.agents`".into());
            } else if d.help.is_empty() {
                d.notes
                    .push(format!("declared agents: {}", agents.join(", ")));
            }
        }
        if let Some(m) = &def.machine {
            for (j, n) in m.names().iter().enumerate() {
                if !machines.contains(n) {
                    let p = match m {
                        crate::model::MachineField::One(_) => at(&[k("machine")]),
                        crate::model::MachineField::Many(_) => {
                            at(&[k("machine"), PathSeg::Index(j)])
                        }
                    };
                    self.undeclared_machine(name, "runs", n, &p, machines);
                }
            }
        }
        if let Some(l) = &def.launch {
            for (j, n) in l.names().iter().enumerate() {
                if !machines.contains(n) {
                    let p = match l {
                        crate::model::OneOrMany::One(_) => at(&[k("launch")]),
                        crate::model::OneOrMany::Many(_) => at(&[k("launch"), PathSeg::Index(j)]),
                    };
                    self.undeclared_machine(name, "launches", n, &p, machines);
                }
            }
        }
        if def.wait_for.is_some() {
            self.check_wait_state(name, def, is_final, &at(&[]));
        }
        if def.foreach.is_some() && def.machine.is_none() {
            self.err(
                format!("state `{name}` has `foreach` but no `machine` to run for each item"),
                &at(&[k("foreach")]),
            )
            .help
            .push("add `machine: <name>` naming the machine to run per item".into());
        }

        // Execution fields that do not belong to the chosen type.
        if let Some(ex) = &def.execution {
            let fields: [(&str, bool, &[ExecutionType]); 5] = [
                ("backoffs", ex.backoffs.is_some(), &[ExecutionType::Retry]),
                ("jitter", ex.jitter.is_some(), &[ExecutionType::Retry]),
                (
                    "n_samples",
                    ex.n_samples.is_some(),
                    &[ExecutionType::Parallel, ExecutionType::MdapVoting],
                ),
                (
                    "k_margin",
                    ex.k_margin.is_some(),
                    &[ExecutionType::MdapVoting],
                ),
                (
                    "max_candidates",
                    ex.max_candidates.is_some(),
                    &[ExecutionType::MdapVoting],
                ),
            ];
            for (field, present, types) in fields {
                if present && !types.contains(&ex.kind) {
                    let allowed: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
                    self.warn_key(
                        format!(
                            "`{field}` has no effect with `execution.type: {}`",
                            ex.kind.as_str()
                        ),
                        &at(&[k("execution"), k(field)]),
                    )
                    .help
                    .push(format!(
                        "`{field}` applies to `type: {}`",
                        allowed.join("` or `")
                    ));
                }
            }
            if def.agent.is_none() {
                self.warn_key(
                    format!("`execution` has no effect on state `{name}`, which calls no agent"),
                    &at(&[k("execution")]),
                );
            }
        }

        // Scopes: in a state, `input` is the context (as in the reference).
        let produces_output = def.agent.is_some() || def.machine.is_some() || def.foreach.is_some();
        let base_scope = Scope::new(&["context", "input"]);
        let as_name = def.as_.clone().unwrap_or_else(|| "item".to_string());
        if ["context", "input", "output"].contains(&as_name.as_str()) {
            self.err(
                format!(
                    "`as: {as_name}` would hide the `{as_name}` variable in this state's templates"
                ),
                &at(&[k("as")]),
            )
            .help
            .push("pick another name for the foreach item, e.g. `as: item`".into());
        }
        let item_scope = base_scope.with(&as_name);
        let input = def.input.as_ref().map(|m| {
            let scope = if def.foreach.is_some() {
                &item_scope
            } else {
                &base_scope
            };
            self.templates(
                &at(&[k("input")]),
                serde_json::Value::Object(m.clone()),
                scope,
            )
        });
        // On a state with no agent or machine, the reference ignores `output_to_context`; real
        // machines still write it (for hooks that read the config), so it is not a warning.
        let _ = produces_output;
        let output_to_context = def.output_to_context.as_ref().map(|m| {
            self.templates(
                &at(&[k("output_to_context")]),
                serde_json::Value::Object(m.clone()),
                &base_scope.with("output"),
            )
        });
        if let Some(otc) = &def.output_to_context {
            self.check_output_reads(def, &at(&[k("output_to_context")]), otc);
        }
        let output = def.output.as_ref().map(|m| {
            if !is_final {
                self.warn_key(
                    format!("`output` is only used by final states; `{name}` is not final"),
                    &at(&[k("output")]),
                );
            }
            self.templates(
                &at(&[k("output")]),
                serde_json::Value::Object(m.clone()),
                &Scope::new(&["context"]),
            )
        });
        let launch_input = def.launch_input.as_ref().map(|m| {
            self.templates(
                &at(&[k("launch_input")]),
                serde_json::Value::Object(m.clone()),
                &base_scope,
            )
        });
        let foreach = def
            .foreach
            .as_ref()
            .map(|f| self.template_str(&at(&[k("foreach")]), f, &base_scope));
        let key = def
            .key
            .as_ref()
            .map(|f| self.template_str(&at(&[k("key")]), f, &item_scope));
        let wait_for = def
            .wait_for
            .as_ref()
            .map(|f| self.template_str(&at(&[k("wait_for")]), f, &base_scope));
        if let Some(crate::model::MachineField::Many(items)) = &def.machine {
            for (j, item) in items.iter().enumerate() {
                if let crate::model::MachineListItem::WithInput(mi) = item
                    && let Some(inp) = &mi.input
                {
                    let mut path = at(&[k("machine"), PathSeg::Index(j), k("input")]);
                    for (key, v) in inp {
                        path.push(PathSeg::Key(key.clone()));
                        self.check_templates(&mut path, v, &base_scope);
                        path.pop();
                    }
                }
            }
        }

        // on_error targets.
        let mut on_error = Vec::new();
        match &def.on_error {
            Some(OnError::State(target)) => {
                if let Some(t) = self.target(
                    name,
                    target,
                    &at(&[k("on_error")]),
                    index,
                    state_names,
                    "on_error",
                ) {
                    on_error.push(("default".to_string(), t));
                }
            }
            Some(OnError::ByType(map)) => {
                for (ty, target) in map {
                    if let Some(t) = self.target(
                        name,
                        target,
                        &at(&[k("on_error"), k(ty)]),
                        index,
                        state_names,
                        "on_error",
                    ) {
                        on_error.push((ty.clone(), t));
                    }
                }
            }
            None => {}
        }

        // Transitions.
        let mut transitions = Vec::new();
        let mut unconditional_seen: Option<usize> = None;
        for (j, t) in def.transitions.iter().flatten().enumerate() {
            let trel = at(&[k("transitions"), PathSeg::Index(j)]);
            if let Some(prev) = unconditional_seen {
                self.warn(format!("this transition can never be taken: transition {prev} of state `{name}` has no condition"), &trel)
                    .help
                    .push("move unconditional (default) transitions last".into());
            }
            let mut crel = trel.clone();
            crel.push(k("condition"));
            let condition = match t.condition.as_deref().map(str::trim) {
                None | Some("") => {
                    unconditional_seen.get_or_insert(j);
                    None
                }
                Some(_) => {
                    let src = t.condition.clone().unwrap_or_default();
                    let parsed = match engine {
                        ExpressionEngine::Simple => {
                            self.condition(&crel, &src).map(Condition::Simple)
                        }
                        ExpressionEngine::Cel => {
                            self.cel_condition(&crel, &src).map(Condition::Cel)
                        }
                    };
                    Some((src, parsed))
                }
            };
            let mut to_rel = trel.clone();
            to_rel.push(k("to"));
            if let Some(to) = self.target(name, &t.to, &to_rel, index, state_names, "transition") {
                transitions.push(TransitionIr {
                    to,
                    position: j,
                    condition,
                });
            }
        }
        if !is_final
            && unconditional_seen.is_none()
            && def.transitions.as_ref().is_some_and(|t| !t.is_empty())
        {
            self.warn_key(format!("every transition of state `{name}` has a condition: a run where none holds stops with an error"), &at(&[k("transitions")]))
                .help
                .push("add a last transition without `condition` as the fallback".into());
        }
        if is_final && !transitions.is_empty() {
            self.warn_key(
                format!("final state `{name}` has transitions, which are never taken"),
                &at(&[k("transitions")]),
            );
        }
        if !is_final && def.transitions.as_ref().is_none_or(Vec::is_empty) {
            self.warn_key(format!("state `{name}` is not final and has no transitions: a run that reaches it stops there"), &at(&[]))
                .help
                .push("add `transitions:` or mark it `type: final`".into());
        }

        let tool_loop = def
            .tool_loop
            .as_ref()
            .and_then(|t| t.config())
            .map(|cfg| self.tool_loop(&cfg, &at(&[k("tool_loop")]), &base_scope));

        StateIr {
            index: i,
            name: name.to_string(),
            variant: String::new(),
            is_final,
            def: def.clone(),
            input,
            output_to_context,
            output,
            launch_input,
            foreach,
            key,
            wait_for,
            on_error,
            transitions,
            tool_loop,
        }
    }

    /// A state's `tool_loop:` object: every limit a non-negative number or a template over
    /// the state's scope.
    fn tool_loop(
        &mut self,
        cfg: &crate::model::ToolLoopConfig,
        rel: &[PathSeg],
        scope: &Scope,
    ) -> crate::ir::ToolLoopIr {
        use crate::model::NumberOrTemplate;
        let mut limits = Vec::new();
        let fields: [(&'static str, &Option<NumberOrTemplate>); 5] = [
            ("max_turns", &cfg.max_turns),
            ("max_tool_calls", &cfg.max_tool_calls),
            ("max_cost", &cfg.max_cost),
            ("tool_timeout", &cfg.tool_timeout),
            ("total_timeout", &cfg.total_timeout),
        ];
        for (field, value) in fields {
            let mut frel = rel.to_vec();
            frel.push(k(field));
            match value {
                None => {}
                Some(NumberOrTemplate::Number(n)) => {
                    if !n.is_finite() || *n < 0.0 {
                        self.err(
                            format!("`tool_loop.{field}` must be a number of at least 0, got {n}"),
                            &frel,
                        )
                        .help
                        .push("0 (or leaving it out) means no limit".into());
                    } else if matches!(field, "max_turns" | "max_tool_calls") && n.fract() != 0.0 {
                        self.err(
                            format!("`tool_loop.{field}` must be a whole number, got {n}"),
                            &frel,
                        );
                    } else {
                        let v = if n.fract() == 0.0 && *n <= i64::MAX as f64 {
                            serde_json::Value::from(*n as i64)
                        } else {
                            serde_json::Value::from(*n)
                        };
                        limits.push((field, TemplateIr(v)));
                    }
                }
                Some(NumberOrTemplate::Template(src)) => {
                    limits.push((field, self.template_str(&frel, src, scope)));
                }
            }
        }
        crate::ir::ToolLoopIr {
            limits,
            allowed: cfg.allowed_tools.clone().unwrap_or_default(),
            denied: cfg.denied_tools.clone().unwrap_or_default(),
        }
    }

    /// Every `tool_loop` state calls an agent that has tools, and names only tools that exist
    /// in `allowed_tools` / `denied_tools`. MCP tools are known only at run time: for an agent
    /// with MCP servers, a bare name no known tool matches may be one of theirs (not an error),
    /// and a `server:tool` pattern must name one of its servers.
    fn check_tool_loops(&mut self, states: &[StateIr], agents: &[AgentIr]) {
        for st in states {
            let Some(tl) = &st.tool_loop else { continue };
            let rel = vec![k("data"), k("states"), k(&st.name)];
            let at = |extra: &[&str]| {
                let mut p = rel.clone();
                p.extend(extra.iter().map(|e| k(e)));
                p
            };
            if st.def.execution.is_some() {
                self.warn_key(
                    format!(
                        "`execution` has no effect on state `{}`, which runs a tool loop",
                        st.name
                    ),
                    &at(&["execution"]),
                )
                .help
                .push("a tool loop calls its agent once per turn; retry, parallel and voting do not apply".into());
            }
            let Some(agent) = &st.def.agent else {
                self.err(
                    format!("state `{}` has `tool_loop` but calls no agent", st.name),
                    &at(&["tool_loop"]),
                )
                .help
                .push("add `agent: <name>` (a flatagent with tools), or remove `tool_loop`".into());
                continue;
            };
            let Some(AgentIr {
                kind: AgentKindIr::Flat(f),
                ..
            }) = agents.iter().find(|a| &a.key == agent)
            else {
                // Adapters and agents that failed to load are checked elsewhere / at run time.
                continue;
            };
            let mut known: Vec<&str> = f.tools.iter().map(|t| t.name.as_str()).collect();
            known.extend(self.rust_tools.iter().map(String::as_str));
            let servers: Vec<&str> = f
                .mcp
                .as_ref()
                .map(|m| m.servers.iter().map(|s| s.name.as_str()).collect())
                .unwrap_or_default();
            // Inline tools written but refused (reported already) still count as tools here,
            // so one mistake gives one error.
            let wrote_tools = matches!(
                self.unit.agents.get(agent),
                Some(AgentUnit::FlatAgent { config: Some(cfg), .. })
                    if cfg.data.tools.as_ref().is_some_and(|t| !t.is_empty())
            );
            if known.is_empty() && servers.is_empty() && !wrote_tools {
                let d = self.err(
                    format!(
                        "state `{}` has `tool_loop`, but agent `{agent}` has no tools",
                        st.name
                    ),
                    &at(&["tool_loop"]),
                );
                d.help.push(format!(
                    "give agent `{agent}` tools: `tools:` (OpenAI function format) or `mcp:` servers in its file, or Rust tools declared with `flatmachine!(\"..\", tools = [name, ..])` and registered with `MachineBuilder::tool`"
                ));
                continue;
            }
            let lists = [("allowed_tools", &tl.allowed), ("denied_tools", &tl.denied)];
            for (field, patterns) in lists {
                for (j, pattern) in patterns.iter().enumerate() {
                    let mut prel = at(&["tool_loop", field]);
                    prel.push(PathSeg::Index(j));
                    if let Some((server, _)) = pattern.split_once(':') {
                        if !server.contains('*') && !servers.contains(&server) {
                            let d = self.err(
                                format!(
                                    "`{field}` names `{pattern}`, but agent `{agent}` has no MCP server `{server}`"
                                ),
                                &prel,
                            );
                            if servers.is_empty() {
                                d.help.push(format!("`server:tool` patterns name tools of the agent's `mcp.servers`; agent `{agent}` has none"));
                            } else {
                                d.help.extend(did_you_mean(server, servers.iter().copied()));
                                d.help.push(format!(
                                    "MCP servers of agent `{agent}`: {}",
                                    servers.join(", ")
                                ));
                            }
                        }
                        continue;
                    }
                    let matched = known
                        .iter()
                        .any(|name| crate::agents::tool_pattern_matches(pattern, name));
                    if matched || !servers.is_empty() {
                        continue;
                    }
                    let d = self.err(
                        format!("`{field}` names `{pattern}`, which is no tool of agent `{agent}`"),
                        &prel,
                    );
                    d.help.extend(did_you_mean(pattern, known.iter().copied()));
                    d.help
                        .push(format!("tools of agent `{agent}`: {}", known.join(", ")));
                }
            }
        }
    }

    /// A `wait_for` state only waits: the signal's data is its output. Work of another kind
    /// in the same state would run in an order no reader could guess (the reference skips it
    /// silently), and a final state would end the run before the signal could matter.
    fn check_wait_state(
        &mut self,
        name: &str,
        def: &StateDefinition,
        is_final: bool,
        rel: &[PathSeg],
    ) {
        let at = |key: &str| -> Vec<PathSeg> {
            let mut p = rel.to_vec();
            p.push(k(key));
            p
        };
        let other_work = [
            ("agent", def.agent.is_some()),
            ("action", def.action.is_some()),
            ("machine", def.machine.is_some()),
            ("foreach", def.foreach.is_some()),
            ("launch", def.launch.is_some()),
        ];
        for (key, present) in other_work {
            if present {
                self.err_key(
                    format!("state `{name}` waits for a signal (`wait_for`) and also has `{key}`"),
                    &at(key),
                )
                .help
                .push(format!(
                    "a `wait_for` state only waits; move `{key}` to a state before or after it"
                ));
            }
        }
        if is_final {
            self.err_key(
                format!("final state `{name}` cannot wait for a signal: the run ends there"),
                &at("wait_for"),
            )
            .help
            .push("wait in a state before the final one, and go on to it with a transition".into());
        }
        if let Some(t) = def.timeout
            && !(t.is_finite() && t >= 0.0)
        {
            self.err(
                format!("`timeout` of state `{name}` must be a number of seconds, 0 or more"),
                &at("timeout"),
            );
        }
    }

    /// A state names a machine (`machine:` or `launch:`) that `data.machines` does not declare.
    fn undeclared_machine(
        &mut self,
        state: &str,
        verb: &str,
        n: &str,
        rel: &[PathSeg],
        machines: &[&str],
    ) {
        let d = self.err(
            format!("state `{state}` {verb} machine `{n}`, which is not declared"),
            rel,
        );
        d.help.extend(did_you_mean(n, machines.iter().copied()));
        if n.ends_with(".yml") || n.ends_with(".yaml") {
            d.help.push(format!(
                "name the file under `data.machines` (e.g. `child: {n}`) and use that name here"
            ));
        } else if machines.is_empty() {
            d.help.push("declare it under `data.machines`".into());
        } else if d.help.is_empty() {
            d.notes
                .push(format!("declared machines: {}", machines.join(", ")));
        }
    }

    fn target(
        &mut self,
        from: &str,
        to: &str,
        rel: &[PathSeg],
        index: &IndexMap<&str, usize>,
        names: &[&str],
        what: &str,
    ) -> Option<usize> {
        if let Some(&i) = index.get(to) {
            return Some(i);
        }
        let msg = match what {
            "on_error" => format!("`on_error` of state `{from}` names unknown state `{to}`"),
            _ => format!("transition to unknown state `{to}`"),
        };
        let d = self.err(msg, rel);
        d.help.extend(did_you_mean(to, names.iter().copied()));
        if d.help.is_empty() {
            d.notes.push(format!("states are: {}", names.join(", ")));
        }
        None
    }

    /// Parse a condition; report syntax errors at the right column.
    fn condition(&mut self, rel: &[PathSeg], src: &str) -> Option<expr::Expr> {
        let parsed = expr::parse(src);
        self.condition_result(rel, parsed)
    }

    fn cel_condition(&mut self, rel: &[PathSeg], src: &str) -> Option<expr::cel::CelCondition> {
        let parsed = expr::cel::check(src);
        self.condition_result(rel, parsed)
    }

    /// A parsed condition, or its error reported at the offending text.
    fn condition_result<T>(
        &mut self,
        rel: &[PathSeg],
        parsed: Result<T, expr::ExprSyntaxError>,
    ) -> Option<T> {
        match parsed {
            Ok(e) => Some(e),
            Err(e) => {
                let span = match self.node(rel) {
                    Some(n) => n.span_in_value(
                        self.project.db.file(self.origin().file),
                        e.offset,
                        e.len.max(1),
                    ),
                    None => self.project.span(self.origin(), rel),
                };
                let mut d =
                    Diagnostic::error(format!("invalid condition: {}", e.message), Some(span));
                d.help.extend(e.help);
                self.diags.push(d);
                None
            }
        }
    }

    /// Check every template string in a value tree; return the tree for embedding.
    fn templates(
        &mut self,
        rel: &[PathSeg],
        value: serde_json::Value,
        scope: &Scope,
    ) -> TemplateIr {
        let mut path = rel.to_vec();
        self.check_templates(&mut path, &value, scope);
        TemplateIr(value)
    }

    /// Check every template string under `value`, which is at `path` (restored on return).
    fn check_templates(
        &mut self,
        path: &mut Vec<PathSeg>,
        value: &serde_json::Value,
        scope: &Scope,
    ) {
        match value {
            serde_json::Value::String(s) => {
                self.check_template(path, s, scope);
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    path.push(PathSeg::Index(i));
                    self.check_templates(path, v, scope);
                    path.pop();
                }
            }
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    path.push(PathSeg::Key(key.clone()));
                    self.check_templates(path, v, scope);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    fn template_str(&mut self, rel: &[PathSeg], src: &str, scope: &Scope) -> TemplateIr {
        self.check_template(rel, src, scope);
        TemplateIr(serde_json::Value::String(src.to_string()))
    }

    fn check_template(&mut self, rel: &[PathSeg], src: &str, scope: &Scope) {
        let origin = self.origin().clone();
        self.check_template_in(&origin, rel, src, Some(scope), false);
    }

    /// The span of `len` bytes at `offset` inside the template string at `rel` under `origin`.
    fn template_span(&self, origin: &Origin, rel: &[PathSeg], offset: usize, len: usize) -> Span {
        let file = self.project.db.file(origin.file);
        match self.project.node(origin, rel) {
            Some(n) if matches!(n.kind, NodeKind::Str(_)) => n.span_in_value(file, offset, len),
            Some(n) => n.span,
            None => self.project.span(origin, rel),
        }
    }

    /// Check a template at `rel` under `origin`; with no scope, only its syntax. In an agent's
    /// prompt, a variable out of scope gets the hint that agents see only their input.
    fn check_template_in(
        &mut self,
        origin: &Origin,
        rel: &[PathSeg],
        src: &str,
        scope: Option<&Scope>,
        agent_prompt: bool,
    ) {
        if !agent_prompt {
            // Machine templates whose text is JSON are parsed into values when rendered.
            for problem in crate::templates::quoted_expressions_in_json(src) {
                let span = self.template_span(origin, rel, problem.offset, problem.len);
                let mut d = Diagnostic::warning(problem.message, Some(span));
                d.help.extend(problem.help);
                d.notes.push(
                    "the rendered text is parsed as JSON; see docs/templates.md, \"Building JSON\""
                        .into(),
                );
                self.diags.push(d);
            }
        }
        let problems = match scope {
            Some(scope) => crate::templates::check(src, &scope.names),
            None => crate::templates::check_syntax(src),
        };
        if problems.is_empty() {
            // Finding the node walks the path from the document's root: only for problems.
            return;
        }
        let found: Vec<Diagnostic> = problems
            .into_iter()
            .map(|problem| {
                let span = self.template_span(origin, rel, problem.offset, problem.len);
                let message = match (&problem.var, agent_prompt) {
                    (Some(var), true) => {
                        format!("agent prompt reads `{var}`, which is not in scope in prompts")
                    }
                    _ => problem.message,
                };
                let mut d = Diagnostic::error(message, Some(span));
                match (&problem.var, agent_prompt) {
                    (Some(var), true) => {
                        let names = scope.map(|s| s.names.as_slice()).unwrap_or_default();
                        let close = did_you_mean(var, names.iter().map(String::as_str));
                        let obvious = ["context", "output"].contains(&var.as_str());
                        if let Some(c) = close.filter(|_| !obvious) {
                            d.help.push(c);
                        } else {
                            d.help.push(
                                "agents see only `input`: pass it from the state's `input:`".into(),
                            );
                        }
                        d.notes
                            .push(format!("a prompt may read `{}`", PROMPT_SCOPE.join("`, `")));
                    }
                    _ => d.help.extend(problem.help),
                }
                d
            })
            .collect();
        self.diags.extend(found);
    }

    /// A missing agent file is an error, also when the states that call the agent route their
    /// errors with `on_error`: every run would take that route (the reference fails at run time
    /// with `FileNotFoundError`), which is never what the file name was written for.
    fn missing_agent_file(&mut self, key: &str, diagnostic: &Diagnostic) {
        let routed = self.unit.config.as_ref().is_some_and(|cfg| {
            cfg.data
                .states
                .values()
                .any(|s| s.agent.as_deref() == Some(key) && s.on_error.is_some())
        });
        let mut d = diagnostic.clone();
        d.severity = crate::diagnostic::Severity::Error;
        if routed {
            d.notes.push(format!(
                "every call of agent `{key}` would fail; `on_error` does not make a missing file optional"
            ));
        }
        self.diags.push(d);
    }

    /// Check and lower this machine's agents.
    fn agents(&mut self) -> Vec<AgentIr> {
        let unit = self.unit;
        let mut out = Vec::new();
        for (key, agent) in &unit.agents {
            let kind = match agent {
                AgentUnit::Adapter {
                    kind,
                    reference,
                    config,
                } => AgentKindIr::Adapter {
                    kind: kind.clone(),
                    reference: reference.clone(),
                    config: config
                        .as_ref()
                        .map(|c| serde_json::Value::Object(c.clone()).to_string()),
                },
                AgentUnit::FlatAgent {
                    origin,
                    config: Some(cfg),
                    profiles,
                } => match self.flatagent(key, origin, cfg, *profiles) {
                    Some(f) => AgentKindIr::Flat(Box::new(f)),
                    None => AgentKindIr::Missing,
                },
                AgentUnit::FlatAgent { config: None, .. } | AgentUnit::Missing => {
                    AgentKindIr::Missing
                }
                AgentUnit::NotFound { path, diagnostic } => {
                    self.missing_agent_file(key, diagnostic);
                    AgentKindIr::NotFound(path.clone())
                }
            };
            out.push(AgentIr {
                key: key.clone(),
                kind,
            });
        }
        out
    }

    /// A flatagent: its prompts read only the agent's variables (and parse), its model
    /// resolves (through the profiles) to a name.
    fn flatagent(
        &mut self,
        key: &str,
        origin: &Origin,
        cfg: &AgentWrapper,
        profiles: Option<ProfilesId>,
    ) -> Option<FlatAgentIr> {
        let d = &cfg.data;
        let scope = Scope::new(PROMPT_SCOPE);
        let fields = [
            ("system", d.system.as_ref()),
            ("user", Some(&d.user)),
            ("instruction_suffix", d.instruction_suffix.as_ref()),
        ];
        for (field, src) in fields {
            if let Some(src) = src {
                self.check_template_in(origin, &[k("data"), k(field)], src, Some(&scope), true);
            }
        }
        if let Some(mcp) = &d.mcp {
            self.check_template_in(
                origin,
                &[k("data"), k("mcp"), k("tool_prompt")],
                &mcp.tool_prompt,
                Some(&Scope::new(&["tools"])),
                false,
            );
        }

        let model_rel = [k("data"), k("model")];
        let model_json = self
            .project
            .node(origin, &model_rel)
            .map(|n| crate::yaml::to_json(n, &mut Vec::new()))
            .unwrap_or_default();
        let set = profiles.and_then(|p| profile_set(self.project, p));
        let resolved = crate::agents::resolve(&model_json, set.as_ref());
        let name = d
            .name
            .clone()
            .or_else(|| {
                cfg.metadata
                    .as_ref()
                    .and_then(|m| m.get("name"))
                    .and_then(|n| n.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| key.to_string());
        let mut model = ModelIr::from_merged(&resolved.merged);
        if model.is_none() && !resolved.profile_missing {
            if d.model.is_none() {
                // The reference uses the default profile for an agent without `model:`.
                let (message, help) = match &set {
                    None => (
                        format!("agent `{name}` has no `model` and no `profiles.yml` applies"),
                        "add `model:` (a profile name or `{name: ..., provider: ...}`), or put a `profiles.yml` with a `default` profile beside the agent or machine",
                    ),
                    Some(_) => (
                        format!(
                            "agent `{name}` has no `model` and its `profiles.yml` has no `default` profile"
                        ),
                        "add `model:` naming a profile, or set `default:` in the profiles file",
                    ),
                };
                self.diags.push(
                    Diagnostic::error(message, Some(self.project.key_span(origin, &[k("data")])))
                        .with_help(help),
                );
            } else {
                let span = self.project.span(origin, &model_rel);
                let help = if set.is_some() {
                    "set `name:` under `model:`, or in the profile it uses (or the `default` profile)"
                } else {
                    "set `name:` under `model:`, or name a profile of a `profiles.yml` beside the agent or machine"
                };
                self.diags.push(
                    Diagnostic::error(
                        format!("the model of agent `{name}` has no `name`"),
                        Some(span),
                    )
                    .with_help(help),
                );
            }
        }
        if let Some(m) = &mut model {
            m.profile = resolved.profile.clone();
            if !self.check_provider(origin, m, profiles) {
                return None;
            }
        }
        let model = model?;
        let metadata = cfg
            .metadata
            .as_ref()
            .map(|m| serde_json::Value::Object(m.clone()).to_string())
            .unwrap_or_else(|| "{}".to_string());
        let tools = self.inline_tools(origin, &name, d.tools.as_deref().unwrap_or_default());
        Some(FlatAgentIr {
            name,
            source: self.project.db.file(origin.file).display.clone(),
            system: d.system.clone(),
            user: d.user.clone(),
            instruction_suffix: d.instruction_suffix.clone(),
            model,
            output: d.output.clone().filter(|o| !o.is_empty()),
            metadata,
            tools,
            mcp: d.mcp.as_ref().map(lower_mcp),
        })
    }

    /// An agent's inline `tools:`: `type: function`, a unique name that no Rust tool also
    /// has, and `parameters` that are a valid JSON Schema of an object.
    fn inline_tools(
        &mut self,
        origin: &Origin,
        agent: &str,
        tools: &[crate::model::ToolDefinitionDef],
    ) -> Vec<crate::ir::InlineToolIr> {
        let mut out: Vec<crate::ir::InlineToolIr> = Vec::new();
        for (j, t) in tools.iter().enumerate() {
            let trel = vec![k("data"), k("tools"), PathSeg::Index(j)];
            let at = |extra: &[&str]| {
                let mut p = trel.clone();
                p.extend(extra.iter().map(|e| k(e)));
                p
            };
            let push = |this: &mut Self, d: Diagnostic| {
                this.diags.push(d);
            };
            if t.kind != "function" {
                let span = self.project.span(origin, &at(&["type"]));
                push(
                    self,
                    Diagnostic::error(
                        format!(
                            "tool {j} of agent `{agent}` has `type: {}`; only `function` tools exist",
                            t.kind
                        ),
                        Some(span),
                    ),
                );
                continue;
            }
            let name = &t.function.name;
            let name_rel = at(&["function", "name"]);
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_name {
                let span = self.project.span(origin, &name_rel);
                push(
                    self,
                    Diagnostic::error(
                        format!(
                            "tool name `{name}` of agent `{agent}` is not one the providers accept"
                        ),
                        Some(span),
                    )
                    .with_help("use 1 to 64 ASCII letters, digits, `_` or `-`"),
                );
                continue;
            }
            if out.iter().any(|o| &o.name == name) {
                let span = self.project.span(origin, &name_rel);
                push(
                    self,
                    Diagnostic::error(
                        format!("agent `{agent}` defines tool `{name}` twice"),
                        Some(span),
                    ),
                );
                continue;
            }
            if self.rust_tools.iter().any(|r| r == name) {
                let span = self.project.span(origin, &name_rel);
                push(
                    self,
                    Diagnostic::error(
                        format!("tool `{name}` of agent `{agent}` has the name of a Rust tool"),
                        Some(span),
                    )
                    .with_help(format!(
                        "`{name}` is also declared in `flatmachine!(.., tools = [..])`: one name, one tool — rename one of them (an inline tool is implemented with `MachineBuilder::tool_handler`, not `tool`)"
                    )),
                );
                continue;
            }
            let parameters = match &t.function.parameters {
                Some(p) => serde_json::Value::Object(p.clone()),
                None => serde_json::json!({"type": "object", "properties": {}}),
            };
            if let Err(why) = check_tool_parameters(&parameters) {
                let span = self.project.span(origin, &at(&["function", "parameters"]));
                push(
                    self,
                    Diagnostic::error(
                        format!("tool `{name}` of agent `{agent}`: {why}"),
                        Some(span),
                    )
                    .with_help("`parameters` is the JSON Schema of the arguments object, e.g. `{type: object, properties: {path: {type: string}}, required: [path]}`"),
                );
                continue;
            }
            out.push(crate::ir::InlineToolIr {
                name: name.clone(),
                description: t.function.description.clone().unwrap_or_default(),
                parameters: parameters.to_string(),
            });
        }
        out
    }

    /// A model's provider must be one the runtime knows (the table LiteLLM's names come from),
    /// unless the model names its own `base_url`: prompts never go to a vendor nobody chose.
    fn check_provider(
        &mut self,
        origin: &Origin,
        model: &ModelIr,
        profiles: Option<ProfilesId>,
    ) -> bool {
        let (provider, from_name) = match &model.provider {
            Some(p) => (p.clone(), false),
            None => match model.name.split_once('/') {
                Some((prefix, _)) => (prefix.to_string(), true),
                None => return true,
            },
        };
        if model
            .base_url
            .as_deref()
            .is_some_and(|b| !b.trim().is_empty())
            || flatmachine_providers::find(&provider).is_some()
        {
            return true;
        }
        // Point at where the provider was written: the agent's `model:`, else the profiles.
        let key = if from_name { "name" } else { "provider" };
        let inline = [k("data"), k("model"), k(key)];
        let span = match self.project.node(origin, &inline) {
            Some(node) => node.span,
            None => self
                .profile_key_span(profiles, model.profile.as_deref(), key)
                .unwrap_or_else(|| self.project.span(origin, &[k("data"), k("model")])),
        };
        let known: Vec<&str> = flatmachine_providers::names().collect();
        let message = if from_name {
            format!(
                "unknown provider `{provider}` (the prefix of the model name) and no `base_url`"
            )
        } else {
            format!("unknown provider `{provider}` and no `base_url`")
        };
        self.diags.push(
            Diagnostic::error(message, Some(span))
                .with_help_opt(did_you_mean(&provider, known.iter().copied()))
                .with_help(
                    "give the model a `base_url` (an OpenAI-compatible server), or use a known provider",
                )
                .with_note(format!("known providers: {}", known.join(", "))),
        );
        false
    }

    /// The span of `key` in profile `profile` (or the `override` / `default` profile when the
    /// key comes from there) of a profiles file.
    fn profile_key_span(
        &self,
        profiles: Option<ProfilesId>,
        profile: Option<&str>,
        key: &str,
    ) -> Option<crate::source::Span> {
        let unit = self.project.profiles.get(profiles?)?;
        let cfg = unit.config.as_ref()?;
        let layers = [
            cfg.data.override_.as_deref(),
            profile,
            cfg.data.default.as_deref(),
        ];
        layers.into_iter().flatten().find_map(|name| {
            self.project
                .node(
                    &unit.origin,
                    &[k("data"), k("model_profiles"), k(name), k(key)],
                )
                .map(|n| n.span)
        })
    }

    /// In a state that calls a flatagent, `output.<field>` in `output_to_context` must be a
    /// field the agent's output will have.
    fn check_output_reads(
        &mut self,
        def: &StateDefinition,
        rel: &[PathSeg],
        map: &serde_json::Map<String, serde_json::Value>,
    ) {
        if def.machine.is_some() || def.foreach.is_some() {
            return;
        }
        let Some(agent) = &def.agent else { return };
        let Some(AgentUnit::FlatAgent {
            origin,
            config: Some(cfg),
            ..
        }) = self.unit.agents.get(agent)
        else {
            return;
        };
        let shown = self.project.db.file(origin.file).display.clone();
        let parallel = def
            .execution
            .as_ref()
            .is_some_and(|e| e.kind == ExecutionType::Parallel);
        let schema = cfg.data.output.as_ref().filter(|o| !o.is_empty());
        // `mdap_voting` parses the reply with the agent's `metadata.parsing` patterns.
        let parsing = def
            .execution
            .as_ref()
            .filter(|e| e.kind == ExecutionType::MdapVoting)
            .and_then(|_| cfg.metadata.as_ref()?.get("parsing")?.as_object())
            .filter(|p| !p.is_empty());
        let tool_loop = def.tool_loop.as_ref().and_then(|t| t.config()).is_some();
        let (fields, also, note): (Vec<&str>, &[&str], String) = if tool_loop {
            let mut names: Vec<&str> = schema
                .map(|s| s.keys().map(String::as_str).collect())
                .unwrap_or_default();
            names.extend(TOOL_LOOP_OUTPUT);
            let note = format!(
                "in a `tool_loop` state the output is {}{}",
                TOOL_LOOP_OUTPUT.join(", "),
                if schema.is_some() {
                    format!(", and the fields of agent `{agent}`'s `output` schema")
                } else {
                    String::new()
                }
            );
            (names, &[], note)
        } else if parallel {
            (
                vec!["results", "count"],
                &[],
                "with `execution: {type: parallel}` the output is `{results, count}`".to_string(),
            )
        } else if let Some(parsing) = parsing {
            let names: Vec<&str> = parsing.keys().map(String::as_str).collect();
            let note = format!(
                "with `execution: {{type: mdap_voting}}` the output has the fields of `metadata.parsing` of agent `{agent}` (`{shown}`): {}",
                names.join(", ")
            );
            (names, &[], note)
        } else if let Some(schema) = schema {
            let names: Vec<&str> = schema.keys().map(String::as_str).collect();
            let note = format!("agent `{agent}` (`{shown}`) outputs: {}", names.join(", "));
            // `_raw` holds the reply when it is not valid JSON.
            (names, &["_raw"], note)
        } else {
            (
                vec!["content"],
                &[],
                format!(
                    "agent `{agent}` (`{shown}`) has no `output` schema, so its output is `{{content}}`, the reply text"
                ),
            )
        };
        let free_text = schema.is_none() && !parallel && parsing.is_none() && !tool_loop;
        let mut found = Vec::new();
        collect_strings(rel, &serde_json::Value::Object(map.clone()), &mut found);
        let origin = self.origin().clone();
        for (path, src) in found {
            for read in crate::agents::output_reads(&src) {
                if fields.contains(&read.field.as_str()) || also.contains(&read.field.as_str()) {
                    continue;
                }
                let span = self.template_span(&origin, &path, read.offset, read.len);
                let msg = format!(
                    "the output of agent `{agent}` has no field `{}`",
                    read.field
                );
                // Without a schema the shape is only a convention between the prompt and the
                // machine (real machines rely on it), so that is a warning.
                let mut d = if free_text {
                    Diagnostic::warning(msg, Some(span))
                } else {
                    Diagnostic::error(msg, Some(span))
                }
                .with_help_opt(did_you_mean(&read.field, fields.iter().copied()))
                .with_note(note.clone());
                if free_text {
                    d = d.with_help(format!(
                        "the field is always undefined: give the agent an `output:` schema with `{}`, or read `output.content`",
                        read.field
                    ));
                }
                self.diags.push(d);
            }
        }
    }

    fn graph_checks(&mut self, states: &[StateIr], initial: usize) {
        // Reachability from the initial state (transitions and error routes).
        let n = states.len();
        let mut seen = vec![false; n];
        let mut queue = VecDeque::from([initial]);
        seen[initial] = true;
        while let Some(s) = queue.pop_front() {
            let st = &states[s];
            for t in st
                .transitions
                .iter()
                .map(|t| t.to)
                .chain(st.on_error.iter().map(|(_, t)| *t))
            {
                if !seen[t] {
                    seen[t] = true;
                    queue.push_back(t);
                }
            }
        }
        for (i, st) in states.iter().enumerate() {
            if !seen[i] {
                let rel = [k("data"), k("states"), k(&st.name)];
                self.warn_key(
                    format!("state `{}` is unreachable from the initial state", st.name),
                    &rel,
                );
            }
        }
        if !states
            .iter()
            .enumerate()
            .any(|(i, s)| seen[i] && s.is_final)
        {
            let name = &states[initial].name;
            self.warn_key(
                format!("no final state is reachable from the initial state `{name}`"),
                &[k("data"), k("states"), k(name)],
            )
            .help
            .push("mark the state where runs end `type: final`".into());
        }
    }
}

/// The profiles of a loaded `profiles.yml` as JSON (`None` when it did not load).
fn profile_set(project: &Project, pid: ProfilesId) -> Option<ProfileSet> {
    let unit = project.profiles.get(pid)?;
    let cfg = unit.config.as_ref()?;
    let profiles = project
        .node(&unit.origin, &[k("data"), k("model_profiles")])
        .map(|n| crate::yaml::to_json(n, &mut Vec::new()))
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    Some(ProfileSet {
        profiles,
        default: cfg.data.default.clone(),
        override_: cfg.data.override_.clone(),
    })
}

/// Every string in a value tree, with its path.
fn collect_strings(rel: &[PathSeg], v: &serde_json::Value, out: &mut Vec<(Vec<PathSeg>, String)>) {
    match v {
        serde_json::Value::String(s) => out.push((rel.to_vec(), s.clone())),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let mut p = rel.to_vec();
                p.push(PathSeg::Index(i));
                collect_strings(&p, item, out);
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                let mut p = rel.to_vec();
                p.push(PathSeg::Key(key.clone()));
                collect_strings(&p, item, out);
            }
        }
        _ => {}
    }
}

/// The fields of a `tool_loop` state's output (besides the agent's `output` schema fields).
const TOOL_LOOP_OUTPUT: [&str; 6] = [
    "content",
    "_tool_calls_count",
    "_tool_loop_turns",
    "_tool_loop_cost",
    "_tool_loop_stop",
    "messages",
];

/// Whether `schema` can be a tool's `parameters`: a JSON Schema (that compiles) of an object.
fn check_tool_parameters(schema: &serde_json::Value) -> Result<(), String> {
    match schema.get("type") {
        None => {}
        Some(serde_json::Value::String(t)) if t == "object" => {}
        Some(other) => {
            return Err(format!(
                "`parameters` must describe an object (`type: object`), not `type: {other}`"
            ));
        }
    }
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| format!("`parameters` is not a valid JSON Schema: {e}"))
}

/// The `mcp:` section as the runtime gets it.
fn lower_mcp(mcp: &crate::model::McpConfig) -> crate::ir::McpIr {
    let pairs = |m: &Option<indexmap::IndexMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    crate::ir::McpIr {
        servers: mcp
            .servers
            .iter()
            .map(|(name, s)| crate::ir::McpServerIr {
                name: name.clone(),
                command: s.command.clone(),
                args: s.args.clone().unwrap_or_default(),
                env: pairs(&s.env),
                server_url: s.server_url.clone(),
                headers: pairs(&s.headers),
                timeout: s.timeout,
            })
            .collect(),
        allow: mcp
            .tool_filter
            .as_ref()
            .and_then(|f| f.allow.clone())
            .unwrap_or_default(),
        deny: mcp
            .tool_filter
            .as_ref()
            .and_then(|f| f.deny.clone())
            .unwrap_or_default(),
        tool_prompt: Some(mcp.tool_prompt.clone()).filter(|p| !p.trim().is_empty()),
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
}
