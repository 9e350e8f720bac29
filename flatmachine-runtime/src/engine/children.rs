//! `machine:` and `foreach:` children: built from the parent, run through the invoker.

use super::invoker::InvokeRequest;
use super::machine::{Inner, Machine};
use super::result::{RunError, RunResult};
use super::step::{ChildTotals, Run};
use crate::error::error_type;
use crate::machine::StateSpec;
use crate::template::{self, ScopeRef};
use crate::{Context, StateError, Value};
use futures::StreamExt;
use futures::future::BoxFuture;

/// A new execution id for a child run (`machine:`, `foreach`): a UUID (v4 layout) made from a
/// per-process random seed (one `getrandom`) and a counter, so a foreach over 1,000 items
/// makes no system call per child. Unique within the process (the counter goes through a
/// bijection), and across processes as far as the 128-bit random seeds differ.
pub(super) fn child_execution_id() -> String {
    static SEED: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (a, b) = *SEED.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&splitmix64(a.wrapping_add(n)).to_be_bytes());
    bytes[8..].copy_from_slice(&splitmix64(b ^ n.rotate_left(32)).to_be_bytes());
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut text)
        .to_owned()
}

/// SplitMix64's finalizer: a bijection on `u64` that spreads every input bit.
pub(super) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs at most `cap` of `futures` at a time and returns the first to finish with its
/// position; the rest are dropped (cancelled). `None` when there are none.
pub(super) async fn first_to_finish<T: Send + 'static>(
    futures: Vec<BoxFuture<'static, T>>,
    cap: usize,
) -> Option<(usize, T)> {
    let tagged: Vec<BoxFuture<'static, (usize, T)>> = futures
        .into_iter()
        .enumerate()
        .map(|(i, f)| tag(i, f))
        .collect();
    futures::stream::iter(tagged)
        .buffer_unordered(cap)
        .next()
        .await
}

pub(super) fn tag<T: Send + 'static>(
    i: usize,
    f: BoxFuture<'static, T>,
) -> BoxFuture<'static, (usize, T)> {
    Box::pin(async move { (i, f.await) })
}

/// A child's result as an entry of a parallel/foreach result: its output, or `{_error, _error_type}`.
pub(super) fn child_entry(r: Result<RunResult, StateError>) -> Value {
    match r {
        Ok(res) => res.output,
        Err(e) => serde_json::json!({"_error": e.message, "_error_type": e.error_type}),
    }
}

impl Machine {
    /// The machine for the child `name` (in `machines:`), configured like this one: the same
    /// handlers, agents, hooks registry, checkpoint store, lock, result backend and invoker.
    /// `None` when the machine has no such child.
    pub fn child_machine(&self, name: &str) -> Option<Machine> {
        self.child(name).ok()
    }

    /// The child machine `name`, sharing this machine's handlers and backends. It checkpoints
    /// into this machine's store (unless its own YAML says `persistence: {enabled: false}`),
    /// with its own `checkpoint_on` if it has one.
    pub(super) fn child(&self, name: &str) -> Result<Machine, StateError> {
        let mut children = self
            .inner
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((_, machine)) = children.iter().find(|(n, _)| *n == name) {
            return Ok(machine.clone());
        }
        let machine = self.new_child(name)?;
        if let Some(key) = self
            .inner
            .spec
            .machines
            .iter()
            .map(|(n, _)| *n)
            .find(|n| *n == name)
        {
            children.push((key, machine.clone()));
        }
        Ok(machine)
    }

    pub(super) fn new_child(&self, name: &str) -> Result<Machine, StateError> {
        let spec = self.inner.spec;
        let child = spec.child(name).ok_or_else(|| {
            StateError::new(
                error_type::MACHINE,
                format!("machine `{}` has no child machine `{name}`", spec.name),
            )
        })?;
        let (store, checkpoint_on) = match &child.persistence {
            Some(p) if !p.enabled => (None, None),
            Some(p) => (
                self.inner.store.clone(),
                p.checkpoint_on
                    .map(|v| v.iter().map(|s| s.to_string()).collect())
                    .or_else(|| self.inner.checkpoint_on.clone()),
            ),
            None => (self.inner.store.clone(), self.inner.checkpoint_on.clone()),
        };
        Ok(Machine::from_inner(Inner {
            spec: child,
            hooks: None,
            registry: self.inner.registry.clone(),
            actions: self.inner.actions.clone(),
            fallback: self.inner.fallback.clone(),
            agents: self.inner.agents.clone(),
            adapters: self.inner.adapters.clone(),
            llm: self.inner.llm.clone(),
            executors: self.inner.executors.clone(),
            store,
            lock: self.inner.lock.clone(),
            checkpoint_on,
            max_steps: None,
            max_agent_calls: None,
            max_concurrency: self.inner.max_concurrency,
            ignore_unhandled_actions: self.inner.ignore_unhandled_actions,
            rust_tools: self.inner.rust_tools.clone(),
            tool_handlers: self.inner.tool_handlers.clone(),
            tool_concurrency: self.inner.tool_concurrency,
            results: self.inner.results.clone(),
            launches: self.inner.launches.clone(),
            invoker: self.inner.invoker.clone(),
            children: std::sync::Mutex::default(),
            state_actions: std::sync::OnceLock::new(),
        }))
    }

    /// Runs the child `name` to completion through the invoker (a new execution id, this run
    /// as its parent).
    pub(super) fn run_child(
        &self,
        run: &Run,
        name: &'static str,
        input: Value,
    ) -> BoxFuture<'static, Result<RunResult, StateError>> {
        let request = InvokeRequest {
            parent: self.clone(),
            machine: name,
            execution_id: child_execution_id(),
            parent_execution_id: Some(run.execution_id.clone()),
            input,
            resume: false,
        };
        let invoker = self.inner.invoker.clone();
        Box::pin(async move { invoker.invoke(request).await })
    }

    /// Starts (or, for `resume`, continues) a child run inside this process: what
    /// [`InProcessInvoker`] does.
    pub(crate) async fn run_child_in_process(
        &self,
        request: InvokeRequest,
    ) -> Result<RunResult, RunError> {
        let child = self.child(request.machine).map_err(|e| RunError::State {
            machine: self.inner.spec.name.to_string(),
            execution_id: request.parent_execution_id.clone().unwrap_or_default(),
            state: String::new(),
            error: e,
        })?;
        if request.resume
            && let Some(store) = child.store()
            && store
                .latest_checkpoint_key(&request.execution_id)
                .await?
                .is_some()
        {
            return child.resume(&request.execution_id).await;
        }
        child
            .start(
                request.execution_id,
                request.parent_execution_id,
                request.input,
                None,
            )
            .await
    }

    pub(super) fn concurrency(&self) -> usize {
        self.inner
            .max_concurrency
            .or(self
                .inner
                .spec
                .max_concurrency
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
            .unwrap_or(super::DEFAULT_MAX_CONCURRENCY)
            .max(1)
    }

    /// `machine:` (one child, a list in parallel, or `foreach`).
    pub(super) async fn run_children(
        &self,
        run: &mut Run,
        state: &'static StateSpec,
        context: &mut Context,
    ) -> Result<Value, StateError> {
        let base = ScopeRef::for_state(context);
        let cap = self.concurrency();
        if let Some(fe) = &state.foreach {
            let items = match template::render_with(fe, &base)? {
                Value::Array(items) => items,
                other => {
                    return Err(StateError::new(
                        error_type::TEMPLATE,
                        format!(
                            "foreach must yield a list, got {}",
                            crate::expr::type_name(&other)
                        ),
                    ));
                }
            };
            let name = state.machine[0].name;
            let mut inputs = Vec::with_capacity(items.len());
            let mut keys = Vec::new();
            for item in &items {
                let scope = base.clone().with_item(state.foreach_as, item);
                let input = match &state.input {
                    Some(tv) => template::render_with(tv, &scope)?,
                    None => Value::Object(Context::new()),
                };
                if let Some(k) = &state.key {
                    let key = match template::render_with(k, &scope)? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    keys.push(key);
                }
                inputs.push(input);
            }
            if state.mode_any {
                let futures: Vec<_> = inputs
                    .into_iter()
                    .map(|input| self.run_child(run, name, input))
                    .collect();
                // The first child to finish wins; the others are cancelled (dropped).
                let Some((i, first)) = first_to_finish(futures, cap).await else {
                    return Ok(if state.key.is_some() {
                        Value::Object(Context::new())
                    } else {
                        Value::Array(Vec::new())
                    });
                };
                if let Ok(r) = &first {
                    run.add_child_totals(r);
                }
                let entry = child_entry(first);
                return Ok(match keys.get(i) {
                    Some(key) if state.key.is_some() => {
                        Value::Object(std::iter::once((key.clone(), entry)).collect())
                    }
                    _ => Value::Array(vec![entry]),
                });
            }
            // A child starts when a slot frees up (at most `cap` started at a time), and its
            // result is cut down to its entry as it arrives: a foreach over many items holds
            // the pending inputs and the entries, not every child's whole `RunResult`.
            let results: Vec<(Option<ChildTotals>, Value)> = futures::stream::iter(inputs)
                .map(|input| self.run_child(run, name, input))
                .buffered(cap)
                .map(|r| (r.as_ref().ok().map(ChildTotals::of), child_entry(r)))
                .collect()
                .await;
            let mut entries = Vec::with_capacity(results.len());
            for (totals, entry) in results {
                if let Some(totals) = totals {
                    run.add_totals(totals);
                }
                entries.push(entry);
            }
            if state.key.is_some() {
                return Ok(Value::Object(keys.into_iter().zip(entries).collect()));
            }
            return Ok(Value::Array(entries));
        }
        let shared_input = match &state.input {
            Some(tv) => template::render_with(tv, &base)?,
            None => Value::Object(Context::new()),
        };
        if !state.machine_list {
            let call = &state.machine[0];
            let result = self.run_child(run, call.name, shared_input).await?;
            run.add_child_totals(&result);
            return Ok(result.output);
        }
        let mut futures = Vec::new();
        for call in state.machine {
            let input = match &call.input {
                Some(tv) => template::render_with(tv, &base)?,
                None => shared_input.clone(),
            };
            futures.push(self.run_child(run, call.name, input));
        }
        if state.mode_any {
            // The first child to finish wins and is returned under its name (as the
            // reference does); the others are cancelled (dropped).
            let Some((i, first)) = first_to_finish(futures, cap).await else {
                return Ok(Value::Object(Context::new()));
            };
            if let Ok(r) = &first {
                run.add_child_totals(r);
            }
            let name = state.machine[i].name.to_string();
            return Ok(Value::Object(
                std::iter::once((name, child_entry(first))).collect(),
            ));
        }
        let results: Vec<_> = futures::stream::iter(futures).buffered(cap).collect().await;
        let mut out = Context::new();
        for (call, result) in state.machine.iter().zip(results) {
            if let Ok(r) = &result {
                run.add_child_totals(r);
            }
            out.insert(call.name.to_string(), child_entry(result));
        }
        Ok(Value::Object(out))
    }
}
