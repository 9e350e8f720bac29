//! Progress on a terminal (feature `cli`), drawn on stderr with `indicatif`:
//!
//! - [`ForeachProgress`]: long `foreach` states — children done and failed, rate and ETA,
//!   from the run's [event stream](crate::events). [`cli::main`](crate::cli::main) shows it
//!   when stderr is a terminal and stays quiet otherwise.
//! - [`PoolProgress`]: a worker pool draining — jobs done and poisoned, claimed, rate and
//!   ETA, from the pool's counts (`pool watch`, polled; the same on every host, since the
//!   counts live in the pool's backend).

use std::collections::HashMap;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::distributed::PoolStats;
use crate::events::{EventKind, RunEvent};

/// Progress bars of the `foreach` states running in a watched run tree.
#[derive(Debug)]
pub struct ForeachProgress {
    draw: fn() -> ProgressDrawTarget,
    /// By the parent's execution id: the running foreach state's bar.
    running: HashMap<String, Tracker>,
}

#[derive(Debug)]
struct Tracker {
    state: &'static str,
    bar: ProgressBar,
    done: u64,
    failed: u64,
}

impl ForeachProgress {
    /// Bars drawn on stderr, when stderr is a terminal (`None` otherwise: stay quiet).
    pub fn for_terminal() -> Option<Self> {
        std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| Self {
            draw: ProgressDrawTarget::stderr,
            running: HashMap::new(),
        })
    }

    /// Bars that count but draw nothing (for tests and for callers reading
    /// [`counts`](Self::counts)).
    pub fn hidden() -> Self {
        Self {
            draw: ProgressDrawTarget::hidden,
            running: HashMap::new(),
        }
    }

    /// `(state, done, failed, total)` of the foreach `execution_id` is running, if any.
    pub fn counts(&self, execution_id: &str) -> Option<(&'static str, u64, u64, u64)> {
        self.running.get(execution_id).map(|t| {
            (
                t.state,
                t.done,
                t.failed,
                t.bar.length().unwrap_or_default(),
            )
        })
    }

    /// Takes one event of the stream.
    pub fn record(&mut self, event: &RunEvent) {
        match &event.kind {
            EventKind::Foreach { state, count, .. } => {
                let bar = ProgressBar::with_draw_target(Some(*count as u64), (self.draw)());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, ETA {eta})",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(format!("{} {state}", event.machine));
                bar.set_message("0 failed");
                self.running.insert(
                    event.execution_id.to_string(),
                    Tracker {
                        state,
                        bar,
                        done: 0,
                        failed: 0,
                    },
                );
            }
            EventKind::MachineEnd { .. } | EventKind::MachineFailed { .. } => {
                let failed = matches!(event.kind, EventKind::MachineFailed { .. });
                if let Some(t) = event
                    .parent_execution_id
                    .as_deref()
                    .and_then(|p| self.running.get_mut(p))
                {
                    t.done += 1;
                    if failed {
                        t.failed += 1;
                        t.bar.set_message(format!("{} failed", t.failed));
                    }
                    t.bar.inc(1);
                }
                // The run itself ended: nothing of it runs any more.
                if let Some(t) = self.running.remove(&*event.execution_id) {
                    t.bar.finish_and_clear();
                }
            }
            EventKind::StateExit { state, .. } | EventKind::Error { state, .. } => {
                let id = &*event.execution_id;
                if self.running.get(id).is_some_and(|t| t.state == *state)
                    && let Some(t) = self.running.remove(id)
                {
                    t.bar.finish_and_clear();
                }
            }
            _ => {}
        }
    }
}

/// The progress of a worker pool, from its counts ([`PoolStats`]) read again and again.
///
/// The bar's length is every job the pool has held (so it grows when producers push more);
/// its position the jobs finished (done or poisoned). Rate and ETA are indicatif's, from how
/// fast the position moves.
#[derive(Debug)]
pub struct PoolProgress {
    bar: ProgressBar,
    last: PoolStats,
}

impl PoolProgress {
    /// A bar for pool `name` drawn on stderr, when stderr is a terminal (`None` otherwise).
    pub fn for_terminal(name: &str) -> Option<Self> {
        std::io::IsTerminal::is_terminal(&std::io::stderr())
            .then(|| Self::with_target(name, ProgressDrawTarget::stderr()))
    }

    /// A bar that counts but draws nothing (for tests and for callers reading
    /// [`stats`](Self::stats)).
    pub fn hidden(name: &str) -> Self {
        Self::with_target(name, ProgressDrawTarget::hidden())
    }

    fn with_target(name: &str, target: ProgressDrawTarget) -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, ETA {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("pool {name}"));
        Self {
            bar,
            last: PoolStats::default(),
        }
    }

    /// Takes the pool's counts as they are now.
    pub fn record(&mut self, stats: &PoolStats) {
        self.bar.set_length(stats.total());
        self.bar.set_position(stats.done + stats.poisoned);
        self.bar.set_message(format!(
            "{} claimed, {} pending, {} poisoned",
            stats.claimed, stats.pending, stats.poisoned
        ));
        self.last = *stats;
    }

    /// The counts last recorded.
    pub fn stats(&self) -> PoolStats {
        self.last
    }

    /// Whether the pool had nothing left to do at the last count (no job pending or claimed).
    pub fn is_drained(&self) -> bool {
        self.last.pending == 0 && self.last.claimed == 0
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    fn event(id: &str, parent: Option<&str>, kind: EventKind) -> RunEvent {
        RunEvent::new_for_test(id, parent, "m", kind)
    }

    #[test]
    fn counts_children_done_and_failed_until_the_state_ends() {
        let mut p = ForeachProgress::hidden();
        p.record(&event(
            "root",
            None,
            EventKind::Foreach {
                state: "fan_out",
                machine: "child",
                count: 3,
            },
        ));
        p.record(&event(
            "c1",
            Some("root"),
            EventKind::MachineEnd {
                final_state: "done".into(),
                steps: 2,
                totals: Default::default(),
            },
        ));
        p.record(&event(
            "c2",
            Some("root"),
            EventKind::MachineFailed {
                error: crate::StateError::new("Boom", "x"),
                steps: 1,
            },
        ));
        assert_eq!(p.counts("root"), Some(("fan_out", 2, 1, 3)));
        p.record(&event(
            "root",
            None,
            EventKind::StateExit {
                state: "fan_out",
                step: 2,
            },
        ));
        assert_eq!(p.counts("root"), None);
    }

    #[test]
    fn a_pool_counts_finished_jobs_and_knows_when_it_is_drained() {
        let mut p = PoolProgress::hidden("jobs");
        let mut stats = PoolStats {
            pending: 3,
            claimed: 1,
            done: 0,
            poisoned: 0,
        };
        p.record(&stats);
        assert!(!p.is_drained());
        assert_eq!(p.bar.position(), 0);
        assert_eq!(p.bar.length(), Some(4));
        stats = PoolStats {
            pending: 0,
            claimed: 0,
            done: 3,
            poisoned: 1,
        };
        p.record(&stats);
        assert!(p.is_drained());
        assert_eq!(p.bar.position(), 4);
        assert_eq!(p.stats(), stats);
    }
}
