//! The worker registry in Redis.
//!
//! Keys (prefix `F`): `F:worker:{id}` (hash: `status`, `last_heartbeat`, `host`, `pid`,
//! `capabilities` (JSON), `pool_id`, `started_at`, `current_task_id`), `F:worker:{id}:meta`
//! (hash: metadata key → JSON value, so a heartbeat merges keys on the server),
//! `F:workers` (sorted set of ids by first registration), `F:workers:seq`, and
//! `F:workers:active` (sorted set of the `active` workers by last heartbeat, in ms), so listing
//! stale workers reads only active workers whose heartbeat is old, not every worker ever
//! registered.
//!
//! Heartbeat times are the worker host's clock (fixed-width ISO text, like SQLite): hosts must
//! keep their clocks in sync (NTP) for stale-worker detection to be fair.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::{RedisConnection, RedisSetupError, seg};
use crate::Value;
use crate::distributed::time::{iso_ms, now_ms};
use crate::distributed::{
    DistributedError, RegistrationBackend, StatusFilter, WorkerFilter, WorkerRecord,
    WorkerRegistration, worker_status,
};

/// KEYS = worker hash, meta hash, order zset, seq, active zset; ARGV = id, heartbeat ms, then
/// field/value pairs.
static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[1], KEYS[2])
local args = {}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(args))
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[1])
end
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
return 1
",
    )
});

/// KEYS = worker hash, meta hash, active zset; ARGV = id, field, value, heartbeat ms (or ''),
/// then metadata key/value pairs. Sets the field (and merges metadata) only if the worker
/// exists; returns 0 when it does not. Keeps the active index in step.
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
if #ARGV > 4 then
  local args = {}
  for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
  redis.call('HSET', KEYS[2], unpack(args))
end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'last_heartbeat_ms', ARGV[4]) end
if redis.call('HGET', KEYS[1], 'status') == 'active' then
  if ARGV[4] ~= '' then
    redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
  elseif not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
    local hb = redis.call('HGET', KEYS[1], 'last_heartbeat_ms') or '0'
    redis.call('ZADD', KEYS[3], hb, ARGV[1])
  end
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return 1
",
    )
});

/// KEYS = worker hash, meta hash, order zset, active zset; ARGV = id. 1 if it existed.
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if n > 0 then return 1 end
return 0
",
    )
});

/// Worker registry on a Redis server.
#[derive(Debug, Clone)]
pub struct RedisRegistrationBackend {
    conn: RedisConnection,
}

impl RedisRegistrationBackend {
    /// The registry on `conn`'s server, under its prefix.
    pub fn new(conn: RedisConnection) -> Self {
        Self { conn }
    }

    /// The registry on the server at `url`, keys under `prefix`.
    pub fn open(url: &str, prefix: &str) -> Result<Self, RedisSetupError> {
        Ok(Self::new(RedisConnection::open(url, prefix)?))
    }

    fn worker_key(&self, id: &str) -> String {
        self.conn.key(&format!("worker:{}", seg(id)))
    }

    fn meta_key(&self, id: &str) -> String {
        self.conn.key(&format!("worker:{}:meta", seg(id)))
    }

    async fn set_field(
        &self,
        worker_id: &str,
        field: &str,
        value: &str,
        heartbeat_ms: Option<u64>,
        metadata: Option<serde_json::Map<String, Value>>,
    ) -> Result<(), DistributedError> {
        let mut pairs = Vec::new();
        for (k, v) in metadata.iter().flatten() {
            let text =
                serde_json::to_string(v).map_err(|e| DistributedError::Data(e.to_string()))?;
            pairs.push((k.clone(), text));
        }
        let (worker_key, meta_key, active) = (
            self.worker_key(worker_id),
            self.meta_key(worker_id),
            self.conn.key("workers:active"),
        );
        let heartbeat = heartbeat_ms.map(|ms| ms.to_string()).unwrap_or_default();
        let found: i64 = self
            .conn
            .run("worker update", |mut c, _| {
                let mut inv = UPDATE.prepare_invoke();
                inv.key(&worker_key)
                    .key(&meta_key)
                    .key(&active)
                    .arg(worker_id)
                    .arg(field)
                    .arg(value)
                    .arg(&heartbeat);
                for (k, v) in &pairs {
                    inv.arg(k).arg(v);
                }
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        if found == 0 {
            return Err(DistributedError::WorkerNotFound(worker_id.to_string()));
        }
        Ok(())
    }

    /// Records of `ids`, in order; ids whose hash vanished are skipped.
    async fn records(&self, ids: &[String]) -> Result<Vec<WorkerRecord>, DistributedError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let keys: Vec<(String, String)> = chunk
                .iter()
                .map(|id| (self.worker_key(id), self.meta_key(id)))
                .collect();
            let hashes: Vec<HashMap<String, String>> = self
                .conn
                .run("worker read", |mut c, _| {
                    let mut pipe = redis::pipe();
                    for (w, m) in &keys {
                        pipe.cmd("HGETALL").arg(w);
                        pipe.cmd("HGETALL").arg(m);
                    }
                    async move { pipe.query_async(&mut c).await }
                })
                .await?;
            for (id, pair) in chunk.iter().zip(hashes.chunks(2)) {
                if let [h, meta] = pair
                    && !h.is_empty()
                {
                    out.push(record(id, h, meta)?);
                }
            }
        }
        Ok(out)
    }
}

fn record(
    id: &str,
    h: &HashMap<String, String>,
    meta: &HashMap<String, String>,
) -> Result<WorkerRecord, DistributedError> {
    let data = |e: serde_json::Error| DistributedError::Data(e.to_string());
    let metadata = if meta.is_empty() {
        None
    } else {
        let mut pairs: Vec<(&String, &String)> = meta.iter().collect();
        pairs.sort();
        let mut map = serde_json::Map::new();
        for (k, v) in pairs {
            map.insert(k.clone(), serde_json::from_str(v).map_err(data)?);
        }
        Some(map)
    };
    Ok(WorkerRecord {
        worker_id: id.to_string(),
        status: h.get("status").cloned().unwrap_or_default(),
        last_heartbeat: h.get("last_heartbeat").cloned().unwrap_or_default(),
        host: h.get("host").cloned(),
        pid: h.get("pid").and_then(|p| p.parse().ok()),
        capabilities: h
            .get("capabilities")
            .map(|c| serde_json::from_str(c))
            .transpose()
            .map_err(data)?,
        pool_id: h.get("pool_id").cloned(),
        started_at: h.get("started_at").cloned(),
        current_task_id: h.get("current_task_id").cloned(),
        metadata,
    })
}

#[async_trait]
impl RegistrationBackend for RedisRegistrationBackend {
    async fn register(&self, worker: WorkerRegistration) -> Result<WorkerRecord, DistributedError> {
        let now = now_ms();
        let record = WorkerRecord::from_registration(&worker, iso_ms(now));
        let mut fields: Vec<(&str, String)> = vec![
            ("status", record.status.clone()),
            ("last_heartbeat", record.last_heartbeat.clone()),
            ("last_heartbeat_ms", now.to_string()),
        ];
        if let Some(host) = &record.host {
            fields.push(("host", host.clone()));
        }
        if let Some(pid) = record.pid {
            fields.push(("pid", pid.to_string()));
        }
        if let Some(caps) = &record.capabilities {
            let text =
                serde_json::to_string(caps).map_err(|e| DistributedError::Data(e.to_string()))?;
            fields.push(("capabilities", text));
        }
        if let Some(pool) = &record.pool_id {
            fields.push(("pool_id", pool.clone()));
        }
        if let Some(started) = &record.started_at {
            fields.push(("started_at", started.clone()));
        }
        let keys = [
            self.worker_key(&record.worker_id),
            self.meta_key(&record.worker_id),
            self.conn.key("workers"),
            self.conn.key("workers:seq"),
            self.conn.key("workers:active"),
        ];
        let _: i64 = self
            .conn
            .run("register", |mut c, _| {
                let mut inv = REGISTER.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                inv.arg(&record.worker_id).arg(now);
                for (f, v) in &fields {
                    inv.arg(*f).arg(v);
                }
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(record)
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        metadata: Option<serde_json::Map<String, Value>>,
    ) -> Result<(), DistributedError> {
        let now = now_ms();
        self.set_field(
            worker_id,
            "last_heartbeat",
            &iso_ms(now),
            Some(now),
            metadata,
        )
        .await
    }

    async fn update_status(&self, worker_id: &str, status: &str) -> Result<(), DistributedError> {
        self.set_field(worker_id, "status", status, None, None)
            .await
    }

    async fn get(&self, worker_id: &str) -> Result<Option<WorkerRecord>, DistributedError> {
        Ok(self.records(&[worker_id.to_string()]).await?.pop())
    }

    async fn list(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRecord>, DistributedError> {
        let only_active =
            matches!(&filter.status, Some(StatusFilter::One(s)) if s == worker_status::ACTIVE);
        let (workers, active) = (self.conn.key("workers"), self.conn.key("workers:active"));
        let cutoff_ms = filter
            .stale_threshold_seconds
            .map(|s| now_ms().saturating_sub((s.clamp(0.0, 1e12) * 1000.0) as u64));
        let ids: Vec<String> = self
            .conn
            .run("worker list", |mut c, _| {
                let (workers, active) = (workers.clone(), active.clone());
                async move {
                    if !only_active {
                        return redis::cmd("ZRANGE")
                            .arg(workers)
                            .arg(0)
                            .arg(-1)
                            .query_async(&mut c)
                            .await;
                    }
                    // Active workers only: from the heartbeat index (stale ones: heartbeat
                    // older than the cutoff), then in registration order.
                    let max = cutoff_ms.map_or_else(|| "+inf".to_string(), |ms| format!("({ms}"));
                    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                        .arg(&active)
                        .arg("-inf")
                        .arg(max)
                        .query_async(&mut c)
                        .await?;
                    if ids.is_empty() {
                        return Ok(ids);
                    }
                    let order: Vec<Option<f64>> = redis::cmd("ZMSCORE")
                        .arg(&workers)
                        .arg(&ids)
                        .query_async(&mut c)
                        .await?;
                    let mut paired: Vec<(f64, String)> = ids
                        .into_iter()
                        .zip(order)
                        .map(|(id, o)| (o.unwrap_or(f64::MAX), id))
                        .collect();
                    paired.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Ok(paired.into_iter().map(|(_, id)| id).collect())
                }
            })
            .await?;
        let cutoff = filter.stale_cutoff();
        Ok(self
            .records(&ids)
            .await?
            .into_iter()
            .filter(|r| filter.matches(r, cutoff.as_deref()))
            .collect())
    }

    async fn remove(&self, worker_id: &str) -> Result<bool, DistributedError> {
        let keys = [
            self.worker_key(worker_id),
            self.meta_key(worker_id),
            self.conn.key("workers"),
            self.conn.key("workers:active"),
        ];
        let n: i64 = self
            .conn
            .run("worker remove", |mut c, _| {
                let mut inv = REMOVE.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                inv.arg(worker_id);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(n > 0)
    }
}
