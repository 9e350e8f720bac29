//! Progress of long `foreach` states on a terminal (feature `cli`): children done and failed,
//! rate and ETA, drawn on stderr with `indicatif` from the run's [event stream](crate::events).
//! [`cli::main`](crate::cli::main) shows it when stderr is a terminal and stays quiet
//! otherwise.

use std::collections::HashMap;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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
}
