//! Limits and totals shared by a run tree: the `max_agent_calls` budget every agent call of a
//! run and its children draws from, and the running totals hooks can read.

use crate::agents::{AgentCall, AgentExecutor, AgentResult, Usage};
use crate::error::error_type;
use crate::{Context, StateError, Value};
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The agent-call budget of one run tree (`max_agent_calls`): a run and every child it starts
/// (`machine:`, `foreach:`, `launch:`, at any depth) draw from the same counter.
///
/// Before every agent call the engine reserves one call ([`try_reserve`](Self::try_reserve));
/// the reservation fails once `used() >= limit`: the call is not made, and the run tree fails
/// with `RunError::MaxAgentCalls` (a limit is not routed by `on_error`). A run that stays
/// within the limit finishes, also when it used every call. Concurrent children reserve
/// atomically, so a tree never starts more calls than the limit. After the call the
/// reservation is settled to the number of calls the agent reports (an agent making several
/// provider calls in one `execute` counts them all); a failed call keeps its one.
///
/// Cheap to clone (shared). Custom [`MachineInvoker`](super::MachineInvoker)s get it on the
/// [`InvokeRequest`](super::InvokeRequest): pass [`remaining`](Self::remaining) on to a child
/// that runs elsewhere and [`record`](Self::record) what it reports.
#[derive(Debug, Clone)]
pub struct AgentCallBudget {
    inner: Arc<BudgetCounter>,
}

#[derive(Debug)]
struct BudgetCounter {
    limit: Option<u64>,
    used: AtomicU64,
    refused: AtomicBool,
}

impl AgentCallBudget {
    /// A budget of `limit` calls (`None`: unlimited, only counted).
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            inner: Arc::new(BudgetCounter {
                limit,
                used: AtomicU64::new(0),
                refused: AtomicBool::new(false),
            }),
        }
    }

    /// The limit (`None`: unlimited).
    pub fn limit(&self) -> Option<u64> {
        self.inner.limit
    }

    /// Calls made (or reserved) so far by the whole tree.
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Acquire)
    }

    /// Calls still allowed (`None`: unlimited).
    pub fn remaining(&self) -> Option<u64> {
        self.inner.limit.map(|l| l.saturating_sub(self.used()))
    }

    /// Whether no further call is allowed.
    pub fn is_exhausted(&self) -> bool {
        self.remaining() == Some(0)
    }

    /// Reserves one call; `false` (nothing reserved, and the budget marked
    /// [refused](Self::was_refused)) when the budget is used up.
    pub fn try_reserve(&self) -> bool {
        let granted = match self.inner.limit {
            None => {
                self.inner.used.fetch_add(1, Ordering::AcqRel);
                true
            }
            Some(limit) => self
                .inner
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    (used < limit).then_some(used + 1)
                })
                .is_ok(),
        };
        if !granted {
            self.record_refusal();
        }
        granted
    }

    /// Whether a call of the tree was refused: the run tree is failing with
    /// `MaxAgentCalls`, and `foreach` / `machine: [..]` states start no further child.
    pub fn was_refused(&self) -> bool {
        self.inner.refused.load(Ordering::Acquire)
    }

    /// Marks the budget refused: for a child that ran elsewhere and failed on the limit.
    pub fn record_refusal(&self) {
        self.inner.refused.store(true, Ordering::Release);
    }

    /// Counts `calls` made outside [`try_reserve`](Self::try_reserve): calls restored from
    /// checkpoints on resume, or reported by a child that ran in another process.
    pub fn record(&self, calls: u64) {
        if calls > 0 {
            self.inner.used.fetch_add(calls, Ordering::AcqRel);
        }
    }

    /// Replaces one reserved call by the `calls` the agent reported.
    pub(crate) fn settle(&self, calls: u64) {
        match calls {
            0 => {
                self.inner.used.fetch_sub(1, Ordering::AcqRel);
            }
            1 => {}
            n => self.record(n - 1),
        }
    }
}

/// An agent executor that draws every call from a run tree's [`AgentCallBudget`]: the call is
/// made only if a reservation succeeds (else a `MaxAgentCallsError`, which `on_error` does
/// not route), then settled to the calls the agent reports.
pub(crate) struct Budgeted<'a> {
    pub(crate) inner: &'a dyn AgentExecutor,
    pub(crate) budget: &'a AgentCallBudget,
}

impl Budgeted<'_> {
    /// Reserves a call, makes it, and settles the reservation to the calls the agent reports
    /// (or, for a failed call, the calls it was still billed for; a failure without billing
    /// keeps the one reserved call).
    async fn draw(
        &self,
        call: impl std::future::Future<Output = Result<AgentResult, StateError>>,
    ) -> Result<AgentResult, StateError> {
        if !self.budget.try_reserve() {
            return Err(Self::refused(self.budget));
        }
        let result = call.await;
        match &result {
            Ok(r) => self.budget.settle(r.api_calls),
            Err(e) => {
                if let Some(b) = &e.billed {
                    self.budget.settle(b.api_calls);
                }
            }
        }
        result
    }

    /// The error of a call the budget refused.
    pub(crate) fn refused(budget: &AgentCallBudget) -> StateError {
        StateError::new(
            error_type::MAX_AGENT_CALLS,
            format!(
                "max_agent_calls ({}) reached: no further agent call is made in this run tree",
                budget.limit().unwrap_or(0)
            ),
        )
    }
}

#[async_trait]
impl AgentExecutor for Budgeted<'_> {
    async fn execute(&self, input: &Value, context: &Context) -> Result<AgentResult, StateError> {
        self.draw(self.inner.execute(input, context)).await
    }

    async fn execute_for(
        &self,
        call: &AgentCall<'_>,
        input: &Value,
        context: &Context,
    ) -> Result<AgentResult, StateError> {
        self.draw(self.inner.execute_for(call, input, context))
            .await
    }

    fn metadata(&self) -> Option<&Value> {
        self.inner.metadata()
    }
}

/// The running totals of one execution: agent calls, cost and tokens so far, those of its
/// finished `machine:` / `foreach:` children included (what its [`RunResult`](super::RunResult)
/// will report).
///
/// Read them from a hook, an action handler or an agent closure with
/// [`RunTotals::current`]; a failed run hands them back in
/// [`RunFailure::totals`](super::RunFailure::totals).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct RunTotals {
    /// Agent calls (`total_api_calls`).
    pub api_calls: u64,
    /// Agent cost (`total_cost`).
    pub cost: f64,
    /// Tokens (not restored by `resume`, as in [`RunResult::usage`](super::RunResult::usage)).
    pub usage: Usage,
}

tokio::task_local! {
    static CURRENT_TOTALS: Arc<LiveTotals>;
}

impl RunTotals {
    /// The totals of the execution the current task is running, if any: set for the whole
    /// run, so every hook method (`on_state_enter`, `on_state_exit`, `on_machine_end`,
    /// `on_error`, ...), action handler and agent closure of the run can read them. Inside a
    /// child machine they are the child's.
    pub fn current() -> Option<RunTotals> {
        CURRENT_TOTALS.try_with(|live| live.get()).ok()
    }

    /// Runs `fut` with `live` as [`RunTotals::current`].
    pub(crate) fn scope<F: std::future::Future>(
        live: Arc<LiveTotals>,
        fut: F,
    ) -> impl std::future::Future<Output = F::Output> {
        CURRENT_TOTALS.scope(live, fut)
    }
}

/// The copy of a run's totals [`RunTotals::current`] reads: written by the run whenever its
/// totals change (after an agent call or a child), read by hooks.
#[derive(Debug, Default)]
pub(crate) struct LiveTotals(Mutex<RunTotals>);

impl LiveTotals {
    pub(crate) fn get(&self) -> RunTotals {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set(&self, totals: RunTotals) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = totals;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit_and_settle_to_reported_calls() {
        let budget = AgentCallBudget::new(Some(3));
        assert!(budget.try_reserve());
        budget.settle(2);
        assert_eq!(budget.used(), 2);
        assert!(budget.try_reserve());
        assert!(!budget.was_refused());
        assert!(!budget.try_reserve());
        assert!(budget.is_exhausted());
        assert!(budget.was_refused());
        budget.settle(0);
        assert_eq!(budget.remaining(), Some(1));
        let unlimited = AgentCallBudget::new(None);
        assert!(unlimited.try_reserve());
        assert_eq!(unlimited.remaining(), None);
        assert_eq!(unlimited.used(), 1);
    }

    #[test]
    fn concurrent_reservations_never_pass_the_limit() {
        let budget = AgentCallBudget::new(Some(100));
        let granted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if budget.try_reserve() {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.load(Ordering::Relaxed), 100);
        assert_eq!(budget.used(), 100);
    }
}
