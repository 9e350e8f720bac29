//! The signal, dispatch and fork commands of [`cli::main`](crate::cli::main).

use std::time::Duration;

use serde_json::json;

use crate::engine::{ForkOptions, RunResult};
use crate::signals::{
    DispatchOptions, DispatchReport, Dispatched, Dispatcher, SendOptions, render_waiting,
    waiting_runs,
};
use crate::{Machine, Value};

/// Reads a JSON value given as text or `@path`.
pub(crate) fn read_json(arg: &str, what: &str) -> Result<Value, String> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the {what} file `{path}`: {e}"))?,
        None => arg.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| format!("the {what} is not valid JSON: {e}"))
}

/// `signal send CHANNEL --data JSON [--ttl SECONDS | --keep]`: prints the signal.
pub(crate) async fn send(
    machine: &Machine,
    channel: &str,
    data: &str,
    ttl: Option<f64>,
    keep: bool,
) -> Result<String, String> {
    let data = read_json(data, "signal data")?;
    let options = match (keep, ttl) {
        (true, _) => SendOptions::keep_until_taken(),
        (false, Some(secs)) if secs.is_finite() && secs > 0.0 => {
            SendOptions::ttl(Duration::from_secs_f64(secs.min(1e10)))
        }
        (false, Some(_)) => return Err("--ttl must be a positive number of seconds".into()),
        (false, None) => SendOptions::default(),
    };
    let signal = machine
        .signal_backend()
        .send(channel, data, options)
        .await
        .map_err(|e| e.to_string())?;
    let text = serde_json::to_string(&json!({
        "id": signal.id,
        "channel": signal.channel,
        "created_at": signal.created_at,
    }))
    .map_err(|e| e.to_string())?;
    Ok(format!("{text}\n"))
}

/// `waiting [--json]`.
pub(crate) async fn waiting(machine: &Machine, as_json: bool) -> Result<String, String> {
    let store = machine.store().ok_or_else(|| {
        format!(
            "machine `{}` runs without checkpoints: no run can wait",
            machine.spec().name
        )
    })?;
    let runs = waiting_runs(store, Some(machine.signal_backend().as_ref()))
        .await
        .map_err(|e| e.to_string())?;
    if as_json {
        let text = serde_json::to_string_pretty(&runs).map_err(|e| e.to_string())?;
        return Ok(format!("{text}\n"));
    }
    Ok(render_waiting(&runs))
}

/// A run result as a JSON object for reports.
pub(crate) fn result_json(r: &RunResult) -> Value {
    match r.waiting() {
        Some(w) => json!({
            "execution_id": r.execution_id,
            "status": "waiting",
            "state": w.state,
            "channel": w.channel,
            "deadline": w.deadline,
            "steps": r.steps,
        }),
        None => json!({
            "execution_id": r.execution_id,
            "status": "finished",
            "final_state": r.final_state,
            "steps": r.steps,
            "output": r.output,
        }),
    }
}

fn report_json(report: &DispatchReport) -> Value {
    let runs: Vec<Value> = report
        .outcomes
        .iter()
        .map(|o| match o {
            Dispatched::Resumed { channel, result } => {
                let mut v = result_json(result);
                v["channel"] = json!(channel);
                v
            }
            Dispatched::Failed {
                execution_id,
                channel,
                error,
            } => json!({
                "execution_id": execution_id,
                "channel": channel,
                "status": "failed",
                "error": error.to_string(),
            }),
            Dispatched::Busy { execution_id } => {
                json!({"execution_id": execution_id, "status": "busy"})
            }
            Dispatched::Stale { execution_id } => {
                json!({"execution_id": execution_id, "status": "stale"})
            }
        })
        .collect();
    json!({"delivered": report.delivered, "purged": report.purged, "runs": runs})
}

/// `dispatch [--once] [--poll-ms N] [--allow-fingerprint-change]`.
pub(crate) async fn dispatch(
    machine: &Machine,
    once: bool,
    poll_ms: u64,
    allow_fingerprint_change: bool,
) -> Result<String, String> {
    let options = DispatchOptions::new()
        .poll_interval(Duration::from_millis(poll_ms.max(1)))
        .allow_fingerprint_change(allow_fingerprint_change);
    let dispatcher = Dispatcher::with_options(machine, options);
    if once {
        let report = dispatcher
            .dispatch_once()
            .await
            .map_err(|e| e.to_string())?;
        let text =
            serde_json::to_string_pretty(&report_json(&report)).map_err(|e| e.to_string())?;
        return Ok(format!("{text}\n"));
    }
    eprintln!(
        "dispatching signals for machine `{}` (Ctrl-C to stop)",
        machine.spec().name
    );
    dispatcher
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::new())
}

/// `fork EXEC [--step N] [--event E] [--set KEY=JSON]... [--id ID] [--allow-fingerprint-change]`:
/// the fork's options.
pub(crate) fn fork_options(
    step: Option<u64>,
    event: Option<String>,
    set: &[String],
    id: Option<String>,
    allow_fingerprint_change: bool,
) -> Result<ForkOptions, String> {
    let mut options = ForkOptions::new().allow_fingerprint_change(allow_fingerprint_change);
    if let Some(step) = step {
        options = options.step(step);
    }
    if let Some(event) = event {
        options = options.event(event);
    }
    if let Some(id) = id {
        options = options.execution_id(id);
    }
    for edit in set {
        let (key, value) = parse_set(edit)?;
        options = options.set(key, value);
    }
    Ok(options)
}

/// `key=json` (a value that is not JSON is taken as a string).
pub(crate) fn parse_set(edit: &str) -> Result<(String, Value), String> {
    let (key, value) = edit
        .split_once('=')
        .ok_or_else(|| format!("--set `{edit}`: expected KEY=JSON"))?;
    if key.trim().is_empty() {
        return Err(format!("--set `{edit}`: the key is empty"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((key.trim().to_string(), value))
}
