//! The operator subcommands (feature `cli`), shared by the `flatmachine` command and app
//! binaries on [`cli::main`](crate::cli::main):
//!
//! ```text
//! pool list                          pools with counts, oldest claim, expired leases
//! pool jobs POOL [--status claimed]  jobs with holder, execution, claim age, lease left
//! pool requeue POOL (JOB... | --poisoned)
//! pool drop-poisoned POOL [JOB...]   (every poisoned job without ids)
//! workers list [--stale SECONDS] [--status S]
//! workers remove (WORKER... | --dead)
//! stats [--stale-seconds 60]         JSON: queue depth, claimed ages, attempts, reaps,
//!                                    storage errors and retries, checkpoint latency
//! prune [--keep 0] [--older-than SECONDS]   retention for finished executions
//! ```
//!
//! Each takes `--store` (`redis://host:port/db`, `sqlite:PATH`, or for `prune` a checkpoint
//! directory) and `--prefix` (Redis key prefix); an app binary defaults to the stores its
//! machine's YAML names.

use clap::{Args, Subcommand, ValueEnum};
use std::fmt::Write as _;

use super::{
    AdminTarget, JobReport, PoolReport, REDIS_URL_VAR, drop_poisoned, job_reports,
    open_checkpoints, open_target, pool_reports, prune_finished, remove_workers, requeue, stats,
};
use crate::distributed::{JobStatus, WorkerFilter, WorkerRecord};

/// Where an admin command reads and writes.
#[derive(Debug, Clone, Default, Args)]
pub struct StoreArgs {
    /// The store: `redis://host:port/db` or `sqlite:PATH` (for `prune` also a checkpoint
    /// directory). Default: the stores the machine's YAML names (app binaries), else the
    /// Redis server of `FLATMACHINE_REDIS_URL` when set.
    #[arg(long)]
    pub store: Option<String>,
    /// The Redis key prefix (default `FLATMACHINE_REDIS_PREFIX`, else `flatmachine`).
    #[arg(long)]
    pub prefix: Option<String>,
}

/// Job statuses on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// Waiting.
    Pending,
    /// Being processed.
    Claimed,
    /// Completed.
    Done,
    /// Given up on.
    Poisoned,
}

impl From<StatusArg> for JobStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Pending => JobStatus::Pending,
            StatusArg::Claimed => JobStatus::Claimed,
            StatusArg::Done => JobStatus::Done,
            StatusArg::Poisoned => JobStatus::Poisoned,
        }
    }
}

/// The operator subcommands (see the [module docs](self)).
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Work pools: counts, jobs with holder and age, requeue, drop poisoned jobs.
    Pool {
        /// What to do.
        #[command(subcommand)]
        action: PoolAction,
    },
    /// Registered workers: list them, remove dead ones.
    Workers {
        /// What to do.
        #[command(subcommand)]
        action: WorkersAction,
    },
    /// Print pool and worker gauges and counters as JSON (queue depth, claimed ages,
    /// attempts, reaps, storage errors and retries, checkpoint latency).
    Stats {
        /// Active workers silent for longer than this count as stale.
        #[arg(long, default_value_t = 60.0)]
        stale_seconds: f64,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Retention: delete the checkpoints of finished executions (never unfinished ones).
    Prune {
        /// Checkpoints to keep per finished execution (0: delete the execution entirely).
        #[arg(long, default_value_t = 0)]
        keep: usize,
        /// Only executions that finished at least this many seconds ago.
        #[arg(long, default_value_t = 0.0)]
        older_than: f64,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `pool …`.
#[derive(Debug, Subcommand)]
pub enum PoolAction {
    /// List the pools with their counts.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List a pool's jobs (default: the claimed ones, with holder, claim age and lease).
    Jobs {
        /// The pool.
        pool: String,
        /// Which jobs.
        #[arg(long, value_enum, default_value_t = StatusArg::Claimed)]
        status: StatusArg,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Put jobs back to pending: poisoned ones with their attempts reset, claimed ones taken
    /// from their holder (its execution is marked superseded).
    Requeue {
        /// The pool.
        pool: String,
        /// The jobs.
        ids: Vec<String>,
        /// Every poisoned job of the pool.
        #[arg(long)]
        poisoned: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete poisoned jobs (all of the pool's when no id is given).
    DropPoisoned {
        /// The pool.
        pool: String,
        /// The jobs.
        ids: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `workers …`.
#[derive(Debug, Subcommand)]
pub enum WorkersAction {
    /// List registered workers.
    List {
        /// Only active workers silent for longer than this many seconds.
        #[arg(long)]
        stale: Option<f64>,
        /// Only workers with this status (`active`, `lost`, `terminated`, ...).
        #[arg(long)]
        status: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete worker records: the ids given, and with `--dead` every lost or terminated
    /// worker. Active workers and workers still holding jobs are refused.
    Remove {
        /// The workers.
        ids: Vec<String>,
        /// Every lost or terminated worker.
        #[arg(long)]
        dead: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// The backends and checkpoint store `args` name.
fn open(args: &StoreArgs, defaults: &AdminTarget) -> Result<AdminTarget, String> {
    let store = match (&args.store, defaults.backends.is_some()) {
        (Some(s), _) => s.clone(),
        (None, true) => return Ok(defaults.clone()),
        (None, false) => match std::env::var(REDIS_URL_VAR) {
            Ok(url) if !url.is_empty() => url,
            _ => {
                return Err(
                    "no store: pass --store redis://HOST:PORT/DB or --store sqlite:PATH".into(),
                );
            }
        },
    };
    open_target(&store, args.prefix.as_deref())
}

fn fmt_secs(s: Option<f64>) -> String {
    s.map_or_else(|| "-".to_string(), |s| format!("{s:.1}s"))
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<String>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let _ = write!(text, "{cell:<w$}");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut out, header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(&mut out, row);
    }
    out
}

fn pools_table(pools: &[PoolReport]) -> String {
    table(
        &[
            "POOL",
            "PENDING",
            "CLAIMED",
            "DONE",
            "POISONED",
            "OLDEST CLAIM",
            "EXPIRED",
            "RELEASED",
            "REQUEUED",
        ],
        pools
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.stats.pending.to_string(),
                    p.stats.claimed.to_string(),
                    p.stats.done.to_string(),
                    p.stats.poisoned.to_string(),
                    fmt_secs(p.oldest_claim_seconds),
                    p.expired_leases.to_string(),
                    (p.counters.released + p.counters.expired).to_string(),
                    p.counters.requeued.to_string(),
                ]
            })
            .collect(),
    )
}

fn jobs_table(jobs: &[JobReport]) -> String {
    table(
        &[
            "JOB",
            "STATUS",
            "HOLDER",
            "AGE",
            "LEASE LEFT",
            "ATTEMPTS",
            "EXECUTION",
            "ERROR",
        ],
        jobs.iter()
            .map(|j| {
                vec![
                    j.id.clone(),
                    j.status.to_string(),
                    j.holder.clone().unwrap_or_else(|| "-".into()),
                    fmt_secs(j.claimed_seconds),
                    fmt_secs(j.lease_left_seconds),
                    format!("{}/{}", j.attempts, j.max_retries),
                    j.execution_id.clone().unwrap_or_else(|| "-".into()),
                    j.error
                        .as_deref()
                        .map(|e| e.chars().filter(|c| !c.is_control()).take(60).collect())
                        .unwrap_or_default(),
                ]
            })
            .collect(),
    )
}

fn workers_table(workers: &[WorkerRecord]) -> String {
    table(
        &["WORKER", "STATUS", "LAST HEARTBEAT", "HOST", "PID", "POOL"],
        workers
            .iter()
            .map(|w| {
                vec![
                    w.worker_id.clone(),
                    w.status.clone(),
                    w.last_heartbeat.clone(),
                    w.host.clone().unwrap_or_else(|| "-".into()),
                    w.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                    w.pool_id.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    )
}

fn json(value: &impl serde::Serialize) -> Result<String, String> {
    serde_json::to_string_pretty(value)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| e.to_string())
}

/// Runs `command`; returns what to print on stdout, or the error message.
pub async fn run(command: AdminCommand, defaults: &AdminTarget) -> Result<String, String> {
    let err = |e: crate::distributed::DistributedError| e.to_string();
    match command {
        AdminCommand::Pool { action } => match action {
            PoolAction::List {
                json: as_json,
                store,
            } => {
                let target = open(&store, defaults)?;
                let backends = target.backends.ok_or("no work backend")?;
                let pools = pool_reports(backends.work.as_ref()).await.map_err(err)?;
                if as_json {
                    json(&pools)
                } else {
                    Ok(pools_table(&pools))
                }
            }
            PoolAction::Jobs {
                pool,
                status,
                limit,
                json: as_json,
                store,
            } => {
                let target = open(&store, defaults)?;
                let backends = target.backends.ok_or("no work backend")?;
                let jobs = job_reports(backends.work.pool(&pool).as_ref(), status.into(), limit)
                    .await
                    .map_err(err)?;
                if as_json {
                    json(&jobs)
                } else {
                    Ok(jobs_table(&jobs))
                }
            }
            PoolAction::Requeue {
                pool,
                ids,
                poisoned,
                store,
            } => {
                if ids.is_empty() && !poisoned {
                    return Err("name the jobs to requeue, or pass --poisoned".into());
                }
                let target = open(&store, defaults)?;
                let backends = target.backends.ok_or("no work backend")?;
                let released = requeue(
                    backends.work.pool(&pool).as_ref(),
                    &ids,
                    poisoned,
                    target.checkpoints.as_ref(),
                )
                .await?;
                let mut out = format!("requeued {} job(s) in pool `{pool}`\n", released.len());
                for r in &released {
                    if let Some(w) = &r.worker_id {
                        let _ = writeln!(
                            out,
                            "  {} taken from worker `{w}`{}",
                            r.id,
                            r.execution_id
                                .as_deref()
                                .map(|e| format!(" (execution `{e}` superseded)"))
                                .unwrap_or_default()
                        );
                    }
                }
                Ok(out)
            }
            PoolAction::DropPoisoned { pool, ids, store } => {
                let target = open(&store, defaults)?;
                let backends = target.backends.ok_or("no work backend")?;
                let n = drop_poisoned(backends.work.pool(&pool).as_ref(), &ids)
                    .await
                    .map_err(err)?;
                Ok(format!("dropped {n} poisoned job(s) from pool `{pool}`\n"))
            }
        },
        AdminCommand::Workers { action } => match action {
            WorkersAction::List {
                stale,
                status,
                json: as_json,
                store,
            } => {
                let target = open(&store, defaults)?;
                let backends = target.backends.ok_or("no registration backend")?;
                let mut filter = match stale {
                    Some(s) => WorkerFilter::stale(s),
                    None => WorkerFilter::all(),
                };
                if let Some(s) = status {
                    filter.status = Some(crate::distributed::StatusFilter::One(s));
                }
                let workers = backends.registration.list(&filter).await.map_err(err)?;
                if as_json {
                    json(&workers)
                } else {
                    Ok(workers_table(&workers))
                }
            }
            WorkersAction::Remove { ids, dead, store } => {
                if ids.is_empty() && !dead {
                    return Err("name the workers to remove, or pass --dead".into());
                }
                let target = open(&store, defaults)?;
                let backends = target.backends.ok_or("no registration backend")?;
                let removed = remove_workers(&backends, &ids, dead).await.map_err(err)?;
                let mut out = format!("removed {} worker(s)\n", removed.removed.len());
                for (id, why) in &removed.refused {
                    let _ = writeln!(out, "  kept {id}: {why}");
                }
                Ok(out)
            }
        },
        AdminCommand::Stats {
            stale_seconds,
            store,
        } => {
            let target = open(&store, defaults)?;
            let backends = target.backends.ok_or("no backends")?;
            json(&stats(&backends, stale_seconds).await.map_err(err)?)
        }
        AdminCommand::Prune {
            keep,
            older_than,
            store,
        } => {
            let checkpoints = match &store.store {
                Some(s) => open_checkpoints(s, store.prefix.as_deref())?,
                None => open(&store, defaults)?
                    .checkpoints
                    .ok_or("no checkpoint store: pass --store")?,
            };
            let report = prune_finished(&checkpoints, keep, older_than)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "{} finished execution(s): {} deleted, {} checkpoint(s) removed; {} unfinished left alone\n",
                report.finished, report.deleted, report.checkpoints_deleted, report.unfinished
            ))
        }
    }
}
