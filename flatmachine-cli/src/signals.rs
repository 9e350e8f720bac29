//! `flatmachine signal send`, `flatmachine waiting` and `flatmachine fork`: signals and forks
//! without the application binary (which `dispatch` and resuming need).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flatmachine_runtime::Value;
use flatmachine_runtime::engine::{ForkOptions, fork_execution};
use flatmachine_runtime::signals::{
    SendOptions, SignalBackend, SqliteSignalBackend, render_waiting, waiting_runs,
};

/// Where signals go when neither `--signals` nor `--machine` says: the SQLite file a machine
/// with `settings.backends.signal: sqlite` and no `sqlite_path` uses.
pub const DEFAULT_SIGNALS: &str = "sqlite:workers.sqlite";

/// A signal backend named on the command line: `sqlite:PATH`, `redis` (the server in
/// `FLATMACHINE_REDIS_URL`) or `redis://HOST:PORT[/DB]` (keys under
/// `FLATMACHINE_REDIS_PREFIX`, default `flatmachine`).
pub fn open_signals(spec: &str) -> Result<Arc<dyn SignalBackend>, String> {
    if let Some(path) = spec.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err("`sqlite:` needs a file path (sqlite:PATH)".to_string());
        }
        return SqliteSignalBackend::open(path)
            .map(|b| Arc::new(b) as Arc<dyn SignalBackend>)
            .map_err(|e| format!("cannot open the signals in {path}: {e}"));
    }
    if spec == "redis" || spec.starts_with("redis://") || spec.starts_with("rediss://") {
        use flatmachine_runtime::redis_backends::{
            DEFAULT_PREFIX, REDIS_PREFIX_ENV, RedisConnection,
        };
        let conn = if spec == "redis" {
            RedisConnection::from_env()
        } else {
            let prefix =
                std::env::var(REDIS_PREFIX_ENV).unwrap_or_else(|_| DEFAULT_PREFIX.to_owned());
            RedisConnection::open(spec, &prefix)
        }
        .map_err(|e| e.to_string())?;
        return Ok(Arc::new(
            flatmachine_runtime::signals::RedisSignalBackend::new(conn),
        ));
    }
    Err(format!(
        "unknown signal store `{spec}`: use sqlite:PATH, redis or redis://HOST:PORT"
    ))
}

/// The signal store a machine file's `settings.backends` names, as `open_signals` takes it.
pub fn signals_of_machine(file: &Path) -> Result<String, String> {
    let checked = flatmachine_build::check(file, None);
    if checked.has_errors() {
        return Err(format!(
            "{}{} has errors",
            checked.render(false),
            file.display()
        ));
    }
    let backends = checked
        .irs
        .first()
        .and_then(Option::as_ref)
        .and_then(|ir| ir.backends.clone())
        .unwrap_or_default();
    match backends.signal.as_deref().unwrap_or("memory") {
        "sqlite" => Ok(format!(
            "sqlite:{}",
            backends.sqlite_path.as_deref().unwrap_or("workers.sqlite")
        )),
        "redis" => Ok("redis".to_string()),
        other => Err(format!(
            "{} keeps its signals in `{other}` (settings.backends.signal), which another process cannot reach: set `signal: sqlite` or `signal: redis`",
            file.display()
        )),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn read_json(arg: &str) -> Result<Value, String> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the data file `{path}`: {e}"))?,
        None => arg.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| format!("--data is not valid JSON: {e}"))
}

/// `signal send`: stores the signal; returns the line to print.
pub fn send(
    store: &str,
    channel: &str,
    data: &str,
    ttl: Option<f64>,
    keep: bool,
) -> Result<String, String> {
    let data = read_json(data)?;
    let options = match (keep, ttl) {
        (true, _) => SendOptions::keep_until_taken(),
        (false, Some(secs)) if secs.is_finite() && secs > 0.0 => {
            SendOptions::ttl(Duration::from_secs_f64(secs.min(1e10)))
        }
        (false, Some(_)) => return Err("--ttl must be a positive number of seconds".into()),
        (false, None) => SendOptions::default(),
    };
    let backend = open_signals(store)?;
    let signal = runtime()?
        .block_on(backend.send(channel, data, options))
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "{}\n",
        serde_json::json!({
            "id": signal.id,
            "channel": signal.channel,
            "created_at": signal.created_at,
            "store": store,
        })
    ))
}

/// `waiting`: the waiting runs of checkpoint store `dir`, with what `signals` knows.
pub fn waiting(dir: &str, signals: Option<&str>, json: bool) -> Result<String, String> {
    let store = crate::convert::open_store(dir, true).map_err(|e| format!("{e} (pass --dir)"))?;
    let backend = signals.map(open_signals).transpose()?;
    let runs = runtime()?
        .block_on(waiting_runs(&store, backend.as_deref()))
        .map_err(|e| e.to_string())?;
    if json {
        let text = serde_json::to_string_pretty(&runs).map_err(|e| e.to_string())?;
        return Ok(format!("{text}\n"));
    }
    Ok(render_waiting(&runs))
}

/// `fork`: copies the execution's checkpoints up to the chosen one under a new id.
pub fn fork(dir: &str, source: &str, options: ForkOptions) -> Result<String, String> {
    // The fork is written into the same store: opened read-write.
    let store = crate::convert::open_store(dir, false).map_err(|e| format!("{e} (pass --dir)"))?;
    let fork = runtime()?
        .block_on(fork_execution(&store, source, &options))
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "{}\nforked execution {} from {} at step {} ({} of state `{}`); run it with `<app> resume {}`\n",
        serde_json::json!({
            "execution_id": fork.execution_id,
            "forked_from": fork.from,
            "state": fork.state,
            "event": fork.event,
        }),
        fork.execution_id,
        fork.from.execution_id,
        fork.from.step,
        fork.event,
        fork.state,
        fork.execution_id,
    ))
}

/// `key=json` pairs of `--set` (a value that is not JSON is a string).
pub fn parse_sets(sets: &[String]) -> Result<Vec<(String, Value)>, String> {
    sets.iter()
        .map(|edit| {
            let (key, value) = edit
                .split_once('=')
                .ok_or_else(|| format!("--set `{edit}`: expected KEY=JSON"))?;
            if key.trim().is_empty() {
                return Err(format!("--set `{edit}`: the key is empty"));
            }
            let value =
                serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
            Ok((key.trim().to_string(), value))
        })
        .collect()
}
