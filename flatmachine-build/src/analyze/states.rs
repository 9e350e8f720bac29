//! Checks and lowering of one state: its kind, transitions, error routes, `wait_for`.

use super::*;

impl Cx<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn state(
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

    /// A `wait_for` state only waits: the signal's data is its output. Work of another kind
    /// in the same state would run in an order no reader could guess (the reference skips it
    /// silently), and a final state would end the run before the signal could matter.
    pub(super) fn check_wait_state(
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
            (
                "tool_loop",
                def.tool_loop.as_ref().is_some_and(|t| t.config().is_some()),
            ),
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
    pub(super) fn undeclared_machine(
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

    pub(super) fn target(
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
}
