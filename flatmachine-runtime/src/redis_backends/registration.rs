//! The worker registry in Redis.
//!
//! Keys (prefix `F`): `F:worker:{id}` (hash: `status`, `last_heartbeat`, `host`, `pid`,
//! `capabilities` (JSON), `pool_id`, `started_at`, `current_task_id`), `F:worker:{id}:meta`
//! (hash: metadata key → JSON value, so a heartbeat merges keys on the server),
//! `F:workers` (sorted set of ids by first registration) and `F:workers:seq`.
//!
//! Heartbeat times are the worker host's clock (fixed-width ISO text, like SQLite): hosts must
//! keep their clocks in sync (NTP) for stale-worker detection to be fair.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::work::storage;
use super::{RedisConnection, RedisSetupError, seg};
use crate::Value;
use crate::distributed::{
    DistributedError, RegistrationBackend, WorkerFilter, WorkerRecord, WorkerRegistration, now_iso,
};

/// KEYS = worker hash, meta hash, order zset, seq; ARGV = id, then field/value pairs.
static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[1], KEYS[2])
local args = {}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(args))
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[1])
end
return 1
",
    )
});

/// KEYS = worker hash, meta hash; ARGV = field, value, then metadata key/value pairs.
/// Sets the field (and merges metadata) only if the worker exists; returns 0 when it does not.
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if #ARGV > 2 then
  local args = {}
  for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
  redis.call('HSET', KEYS[2], unpack(args))
end
return 1
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
        metadata: Option<serde_json::Map<String, Value>>,
    ) -> Result<(), DistributedError> {
        let mut inv = UPDATE.prepare_invoke();
        inv.key(self.worker_key(worker_id))
            .key(self.meta_key(worker_id))
            .arg(field)
            .arg(value);
        for (k, v) in metadata.iter().flatten() {
            let text =
                serde_json::to_string(v).map_err(|e| DistributedError::Data(e.to_string()))?;
            inv.arg(k).arg(text);
        }
        let mut conn = self.conn.manager().await?;
        let found: i64 = inv.invoke_async(&mut conn).await?;
        if found == 0 {
            return Err(DistributedError::WorkerNotFound(worker_id.to_string()));
        }
        Ok(())
    }

    /// Records of `ids`, in order; ids whose hash vanished are skipped.
    async fn records(&self, ids: &[String]) -> Result<Vec<WorkerRecord>, DistributedError> {
        let mut conn = self.conn.manager().await?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HGETALL").arg(self.worker_key(id));
                pipe.cmd("HGETALL").arg(self.meta_key(id));
            }
            let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
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
        let record = WorkerRecord::from_registration(&worker, now_iso());
        let mut inv = REGISTER.prepare_invoke();
        inv.key(self.worker_key(&record.worker_id))
            .key(self.meta_key(&record.worker_id))
            .key(self.conn.key("workers"))
            .key(self.conn.key("workers:seq"))
            .arg(&record.worker_id)
            .arg("status")
            .arg(&record.status)
            .arg("last_heartbeat")
            .arg(&record.last_heartbeat);
        if let Some(host) = &record.host {
            inv.arg("host").arg(host);
        }
        if let Some(pid) = record.pid {
            inv.arg("pid").arg(pid);
        }
        if let Some(caps) = &record.capabilities {
            let text =
                serde_json::to_string(caps).map_err(|e| DistributedError::Data(e.to_string()))?;
            inv.arg("capabilities").arg(text);
        }
        if let Some(pool) = &record.pool_id {
            inv.arg("pool_id").arg(pool);
        }
        if let Some(started) = &record.started_at {
            inv.arg("started_at").arg(started);
        }
        let mut conn = self.conn.manager().await?;
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(record)
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        metadata: Option<serde_json::Map<String, Value>>,
    ) -> Result<(), DistributedError> {
        self.set_field(worker_id, "last_heartbeat", &now_iso(), metadata)
            .await
    }

    async fn update_status(&self, worker_id: &str, status: &str) -> Result<(), DistributedError> {
        self.set_field(worker_id, "status", status, None).await
    }

    async fn get(&self, worker_id: &str) -> Result<Option<WorkerRecord>, DistributedError> {
        Ok(self.records(&[worker_id.to_string()]).await?.pop())
    }

    async fn list(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRecord>, DistributedError> {
        let ids: Vec<String> = {
            let mut conn = self.conn.manager().await?;
            redis::cmd("ZRANGE")
                .arg(self.conn.key("workers"))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .map_err(storage)?
        };
        let cutoff = filter.stale_cutoff();
        Ok(self
            .records(&ids)
            .await?
            .into_iter()
            .filter(|r| filter.matches(r, cutoff.as_deref()))
            .collect())
    }
}
