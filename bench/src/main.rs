//! The Rust half of `bench/run`: runs one scenario on machines compiled by `flatmachine!` from
//! `bench/machines/*.yml` (the same files `bench/python/bench.py` gives the reference) and
//! prints `{"elapsed_s": …, "steps": …, "output": …}` as one JSON line.
//!
//! ```text
//! flatmachine-bench <scenario> <workdir> <n>
//! ```
//!
//! Scenarios: `loop-off`, `loop-memory`, `loop-local`, `loop-local-fsync`, `loop-sqlite`,
//! `loop-sqlite-full`, `templates20`, `foreach`, `parallel`, the agent scenarios
//! `agent-first`, `agent-calls`, `agent-foreach`, whose agents call `$OPENAI_BASE_URL` (the
//! loopback server `flatmachine-bench serve <port-file>` runs, see `server.rs`), and
//! `tool-rounds` (a `tool_loop` state against the OpenAI-compatible server at
//! `$OPENAI_BASE_URL`, see `bench/tool_rounds`). Files (checkpoints, locks) go below
//! `<workdir>`. The time covers the run only (building the machine included), not process
//! start-up; `cpu_s` is the process's CPU time over the same span.
//!
//! ```text
//! flatmachine-bench serve-llm <rounds>
//! ```
//!
//! serves the chat completions API on a free loopback port (printing its base URL): each
//! request is answered with one call of the `step` tool until the conversation holds `<rounds>`
//! tool results, then with a final answer — the server both sides of `bench/tool_rounds` use.

mod server;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use flatmachine_runtime::persistence::{CheckpointStore, LocalFileBackend, SqliteOptions};
use flatmachine_runtime::{AgentOutput, Context, Machine, MachineBuilder, Value};
use serde_json::json;

mod off {
    flatmachine_runtime::flatmachine!("machines/loop_off.yml");
}
mod memory {
    flatmachine_runtime::flatmachine!("machines/loop_memory.yml");
}
mod local {
    flatmachine_runtime::flatmachine!("machines/loop_local.yml");
}
mod sqlite {
    flatmachine_runtime::flatmachine!("machines/loop_sqlite.yml");
}
flatmachine_runtime::flatmachine!("machines/templates20.yml");
flatmachine_runtime::flatmachine!("machines/foreach.yml");
flatmachine_runtime::flatmachine!("machines/parallel.yml");
flatmachine_runtime::flatmachine!("machines/tool_rounds.yml");
flatmachine_runtime::flatmachine!("machines/agent_loop.yml");
flatmachine_runtime::flatmachine!("machines/agent_foreach.yml");

mod llm_server;

/// CPU time of this process so far (user + system, all threads), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        // Linux reports clock ticks of 1/100 s (USER_HZ) to user space.
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

/// Sets the integer under `key` to `f(old)` in place (`old` = 0 when missing); returns it.
fn update(ctx: &mut Context, key: &str, f: impl FnOnce(i64) -> i64) -> i64 {
    match ctx.get_mut(key) {
        Some(slot) => {
            let n = f(slot.as_i64().unwrap_or(0));
            *slot = n.into();
            n
        }
        None => {
            let n = f(0);
            ctx.insert(key.to_owned(), n.into());
            n
        }
    }
}

/// The loop's action (`tick` in `bench/python/bench.py` does the same): `i += 1`,
/// `acc = (acc * 31 + i) mod 1_000_003`. Each entry is read and rewritten in place, as Rust code
/// does it (the Python side reads and assigns the dict items, as Python code does it).
fn with_tick(builder: MachineBuilder) -> MachineBuilder {
    builder.action_mut("tick", |ctx, _call| {
        let i = update(ctx, "i", |i| i + 1);
        update(ctx, "acc", |acc| (acc * 31 + i) % 1_000_003);
        Box::pin(async { Ok(()) })
    })
}

fn builder(scenario: &str, dir: &Path) -> Result<MachineBuilder, String> {
    let locks = dir.join(".locks");
    let checkpoints = dir.join(".checkpoints");
    let local_store = |fsync: bool| {
        CheckpointStore::new(Arc::new(
            LocalFileBackend::new(&checkpoints).with_fsync(fsync),
        ))
    };
    Ok(match scenario {
        "loop-off" => with_tick(Machine::of::<off::bench_loop::Machine>()),
        "loop-memory" => with_tick(Machine::of::<memory::bench_loop::Machine>()),
        "loop-local" => with_tick(Machine::of::<local::bench_loop::Machine>())
            .persistence(local_store(false))
            .lock_dir(locks),
        "loop-local-fsync" => with_tick(Machine::of::<local::bench_loop::Machine>())
            .persistence(local_store(true))
            .lock_dir(locks),
        // `backend: sqlite` from the YAML: `<checkpoint_dir>/checkpoints.sqlite`, NORMAL.
        "loop-sqlite" => with_tick(Machine::of::<sqlite::bench_loop::Machine>())
            .checkpoint_dir(&checkpoints)
            .lock_dir(locks),
        "loop-sqlite-full" => {
            let options = SqliteOptions {
                synchronous_full: true,
                ..SqliteOptions::default()
            };
            let store =
                CheckpointStore::sqlite_with(checkpoints.join("checkpoints.sqlite"), options)
                    .map_err(|e| e.to_string())?;
            with_tick(Machine::of::<sqlite::bench_loop::Machine>())
                .persistence(store)
                .lock_dir(locks)
        }
        // The agent echoes its input (`EchoExecutor` in bench.py).
        "templates20" => {
            Machine::of::<bench_templates::Machine>().agent("echo", |input, _ctx| async move {
                Ok(AgentOutput::new(input))
            })
        }
        "foreach" => Machine::of::<bench_foreach::Machine>(),
        "agent-first" | "agent-calls" => Machine::of::<bench_agent_loop::Machine>(),
        "agent-foreach" => Machine::of::<bench_agent_foreach::Machine>(),
        "parallel" => Machine::of::<bench_parallel::Machine>(),
        // The `step` tool (`step` in bench/python/tool_rounds.py does the same): n + 1.
        "tool-rounds" => Machine::of::<bench_tool_rounds::Machine>().tool_handler(
            "step",
            |args: Value, _call| async move {
                let n = args["n"].as_i64().unwrap_or(0);
                Ok::<_, flatmachine_runtime::tools::ToolError>((n + 1).to_string())
            },
        ),
        other => return Err(format!("unknown scenario `{other}`")),
    })
}

fn input(scenario: &str, n: u64) -> Value {
    match scenario {
        "foreach" | "agent-foreach" => json!({ "numbers": (0..n).collect::<Vec<_>>() }),
        "tool-rounds" => json!({ "start": 0 }),
        _ => json!({ "n": n }),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, rounds] = &args[..]
        && cmd == "serve-llm"
    {
        return llm_server::serve(rounds.parse()?).await;
    }
    if let [serve, port_file] = &args[..]
        && serve == "serve"
    {
        return server::serve(port_file).await;
    }
    let [scenario, dir, n] = &args[..] else {
        return Err(
            "usage: flatmachine-bench <scenario> <workdir> <n> | flatmachine-bench serve <port-file> | flatmachine-bench serve-llm <rounds>"
                .into(),
        );
    };
    let n: u64 = n.parse()?;
    let dir = Path::new(dir);
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let machine = builder(scenario, dir)?.build()?;
    let result = machine.run(input(scenario, n)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "{}",
        json!({"elapsed_s": elapsed, "cpu_s": cpu, "steps": result.steps, "output": result.output})
    );
    Ok(())
}
