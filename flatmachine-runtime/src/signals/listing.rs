//! What `flatmachine waiting` prints: the runs that wait for a signal.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{SignalBackend, SignalError};
use crate::persistence::{CheckpointStore, PersistenceError, checkpoint_event};

/// One waiting run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaitingRun {
    /// The execution.
    pub execution_id: String,
    /// Its machine.
    pub machine: String,
    /// Its `wait_for` state.
    pub state: String,
    /// The step of that state.
    pub step: u64,
    /// The channel it waits on.
    pub channel: String,
    /// When it gives up, if ever.
    pub deadline: Option<String>,
    /// Whether the signal backend has it registered (`None`: no backend was asked).
    pub registered: Option<bool>,
    /// Whether a signal was handed to it and it has not resumed yet.
    pub signal_delivered: bool,
    /// Signals pending on its channel (`None`: no backend was asked).
    pub signals_pending: Option<usize>,
}

/// Why the waiting runs could not be listed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    /// The checkpoint store failed.
    #[error(transparent)]
    Persistence(#[from] PersistenceError),
    /// The signal backend failed.
    #[error(transparent)]
    Signals(#[from] SignalError),
}

/// The runs in `store` whose latest checkpoint is `waiting`, and (when `signals` is given)
/// those the backend has registered whose `waiting` checkpoint is not written yet; with what
/// the backend knows about each. Sorted by channel, then execution id.
pub async fn waiting_runs(
    store: &CheckpointStore,
    signals: Option<&dyn SignalBackend>,
) -> Result<Vec<WaitingRun>, ListError> {
    let mut runs: BTreeMap<String, WaitingRun> = BTreeMap::new();
    for id in store.execution_ids().await? {
        let Ok(Some(snap)) = store.load_latest(&id).await else {
            continue;
        };
        if snap.event.as_deref() != Some(checkpoint_event::WAITING) {
            continue;
        }
        let Some(channel) = snap.waiting_channel.clone() else {
            continue;
        };
        runs.insert(
            id.clone(),
            WaitingRun {
                execution_id: id,
                machine: snap.machine_name,
                state: snap.current_state,
                step: snap.step,
                channel,
                deadline: snap.wait_deadline,
                registered: signals.map(|_| false),
                signal_delivered: false,
                signals_pending: None,
            },
        );
    }
    if let Some(signals) = signals {
        for w in signals.waiters(None).await? {
            let entry = runs
                .entry(w.execution_id.clone())
                .or_insert_with(|| WaitingRun {
                    execution_id: w.execution_id.clone(),
                    machine: w.machine.clone(),
                    state: w.state.clone(),
                    step: w.step,
                    channel: w.channel.clone(),
                    deadline: w.deadline_ms.map(super::iso_from_millis),
                    registered: Some(true),
                    signal_delivered: false,
                    signals_pending: None,
                });
            entry.registered = Some(true);
            entry.signal_delivered = w.delivered.is_some();
        }
        let mut pending: BTreeMap<String, usize> = BTreeMap::new();
        for run in runs.values() {
            if !pending.contains_key(&run.channel) {
                let n = signals.peek(&run.channel).await?.len();
                pending.insert(run.channel.clone(), n);
            }
        }
        for run in runs.values_mut() {
            run.signals_pending = pending.get(&run.channel).copied();
        }
    }
    let mut list: Vec<WaitingRun> = runs.into_values().collect();
    list.sort_by(|a, b| (&a.channel, &a.execution_id).cmp(&(&b.channel, &b.execution_id)));
    Ok(list)
}

/// The list as a text table (or `(no run waits for a signal)`), ending with a newline.
pub fn render_waiting(runs: &[WaitingRun]) -> String {
    if runs.is_empty() {
        return "(no run waits for a signal)\n".to_owned();
    }
    let header = [
        "EXECUTION",
        "MACHINE",
        "STATE",
        "STEP",
        "CHANNEL",
        "DEADLINE",
        "SIGNAL",
    ];
    let rows: Vec<[String; 7]> = runs
        .iter()
        .map(|r| {
            let signal = match (r.signal_delivered, r.signals_pending, r.registered) {
                (true, _, _) => "delivered".to_owned(),
                (false, _, Some(false)) => "not registered".to_owned(),
                (false, Some(0), _) => "-".to_owned(),
                (false, Some(n), _) => format!("{n} pending"),
                (false, None, _) => "?".to_owned(),
            };
            [
                r.execution_id.clone(),
                r.machine.clone(),
                r.state.clone(),
                r.step.to_string(),
                r.channel.escape_debug().to_string(),
                r.deadline.clone().unwrap_or_else(|| "-".to_owned()),
                signal,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    out
}
