//! Work pools in Redis.
//!
//! Keys of pool `P` (prefix `F`; names are escaped with [`seg`]):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `F:work:P:job:{id}` | hash | `data`, `status`, `claimed_by`, `claimed_at`, `attempts`, `max_retries`, `created_at`, `seq`, `result`, `error`, `completed_at` |
//! | `F:work:P:pending` | sorted set | pending job ids, scored by push order (claims pop the lowest) |
//! | `F:work:P:all` | sorted set | every job id, by push order |
//! | `F:work:P:worker:{w}` | set | the ids worker `w` holds (for `release_by_worker`) |
//! | `F:work:P:stats` | hash | counts by status |
//! | `F:work:P:seq` | string | push counter |
//!
//! Every operation is one Lua script, so a claim (`ZPOPMIN` + status change + the worker's set)
//! is atomic across processes and hosts; a job goes back to its old place in the queue when it
//! fails or its worker is reaped, as with SQLite.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use redis::Script;

use super::{LUA_ESC, RedisConnection, RedisSetupError, seg};
use crate::Value;
use crate::distributed::{
    DistributedError, JobStatus, PoolStats, PushOptions, WorkBackend, WorkItem, WorkPool, now_iso,
};

pub(crate) fn storage(e: impl std::fmt::Display) -> DistributedError {
    DistributedError::Storage(format!("redis: {e}"))
}

impl From<redis::RedisError> for DistributedError {
    fn from(e: redis::RedisError) -> Self {
        storage(e)
    }
}

/// KEYS[1] = pool base (`F:work:P:`); ARGV = now, max_retries, then (id, data) pairs.
static PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local base = KEYS[1]
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local seq = redis.call('INCR', base .. 'seq')
  redis.call('HSET', base .. 'job:' .. id, 'data', ARGV[i + 1], 'status', 'pending',
    'attempts', 0, 'max_retries', ARGV[2], 'created_at', ARGV[1], 'seq', seq)
  redis.call('ZADD', base .. 'pending', seq, id)
  redis.call('ZADD', base .. 'all', seq, id)
  n = n + 1
end
redis.call('HINCRBY', base .. 'stats', 'pending', n)
return n
",
    )
});

/// KEYS[1] = pool base, KEYS[2] = the worker's set; ARGV = worker, now, limit.
/// Returns `[id, HGETALL...]` per claimed job.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_ESC}
local base = KEYS[1]
local popped = redis.call('ZPOPMIN', base .. 'pending', tonumber(ARGV[3]))
local out = {{}}
for i = 1, #popped, 2 do
  local id = popped[i]
  local k = base .. 'job:' .. esc(id)
  redis.call('HSET', k, 'status', 'claimed', 'claimed_by', ARGV[1], 'claimed_at', ARGV[2])
  redis.call('HINCRBY', k, 'attempts', 1)
  redis.call('SADD', KEYS[2], id)
  out[#out + 1] = {{id, redis.call('HGETALL', k)}}
end
if #out > 0 then
  redis.call('HINCRBY', base .. 'stats', 'pending', -#out)
  redis.call('HINCRBY', base .. 'stats', 'claimed', #out)
end
return out
"
    ))
});

/// KEYS[1] = pool base; ARGV = now, then (id, has_result, result) triples. All or nothing:
/// `{1, id, status}` (status `''` when the job does not exist) if one is not claimed, else `{0}`.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_ESC}
local base = KEYS[1]
for i = 2, #ARGV, 3 do
  local st = redis.call('HGET', base .. 'job:' .. esc(ARGV[i]), 'status')
  if st ~= 'claimed' then return {{1, ARGV[i], st or ''}} end
end
local n = 0
for i = 2, #ARGV, 3 do
  local k = base .. 'job:' .. esc(ARGV[i])
  local worker = redis.call('HGET', k, 'claimed_by')
  if worker then redis.call('SREM', base .. 'worker:' .. esc(worker), ARGV[i]) end
  redis.call('HSET', k, 'status', 'done', 'completed_at', ARGV[1])
  if ARGV[i + 1] == '1' then
    redis.call('HSET', k, 'result', ARGV[i + 2])
  else
    redis.call('HDEL', k, 'result')
  end
  redis.call('HDEL', k, 'error')
  n = n + 1
end
redis.call('HINCRBY', base .. 'stats', 'claimed', -n)
redis.call('HINCRBY', base .. 'stats', 'done', n)
return {{0}}
"
    ))
});

/// KEYS[1] = pool base, KEYS[2] = job key; ARGV = id, has_error, error.
/// `{0, new_status}` or `{1, status}` when not claimed (`''`: no such job).
static FAIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_ESC}
local base, k = KEYS[1], KEYS[2]
local st = redis.call('HGET', k, 'status')
if st ~= 'claimed' then return {{1, st or ''}} end
if ARGV[2] == '1' then redis.call('HSET', k, 'error', ARGV[3]) else redis.call('HDEL', k, 'error') end
local worker = redis.call('HGET', k, 'claimed_by')
if worker then redis.call('SREM', base .. 'worker:' .. esc(worker), ARGV[1]) end
redis.call('HINCRBY', base .. 'stats', 'claimed', -1)
local attempts = tonumber(redis.call('HGET', k, 'attempts'))
local max = tonumber(redis.call('HGET', k, 'max_retries'))
if attempts >= max then
  redis.call('HSET', k, 'status', 'poisoned')
  redis.call('HINCRBY', base .. 'stats', 'poisoned', 1)
  return {{0, 'poisoned'}}
end
redis.call('HSET', k, 'status', 'pending')
redis.call('HDEL', k, 'claimed_by', 'claimed_at')
redis.call('ZADD', base .. 'pending', redis.call('HGET', k, 'seq'), ARGV[1])
redis.call('HINCRBY', base .. 'stats', 'pending', 1)
return {{0, 'pending'}}
"
    ))
});

/// KEYS[1] = pool base, KEYS[2] = the worker's set; ARGV = worker, lost message.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_ESC}
local base = KEYS[1]
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local k = base .. 'job:' .. esc(id)
  local f = redis.call('HMGET', k, 'status', 'claimed_by', 'attempts', 'max_retries')
  if f[1] == 'claimed' and f[2] == ARGV[1] then
    n = n + 1
    redis.call('HINCRBY', base .. 'stats', 'claimed', -1)
    if tonumber(f[3]) >= tonumber(f[4]) then
      redis.call('HSET', k, 'status', 'poisoned', 'error', ARGV[2])
      redis.call('HINCRBY', base .. 'stats', 'poisoned', 1)
    else
      redis.call('HSET', k, 'status', 'pending')
      redis.call('HDEL', k, 'claimed_by', 'claimed_at')
      redis.call('ZADD', base .. 'pending', redis.call('HGET', k, 'seq'), id)
      redis.call('HINCRBY', base .. 'stats', 'pending', 1)
    end
  end
end
redis.call('DEL', KEYS[2])
return n
"
    ))
});

/// Named pools on a Redis server.
#[derive(Debug)]
pub struct RedisWorkBackend {
    conn: RedisConnection,
    pools: Mutex<HashMap<String, Arc<RedisWorkPool>>>,
}

impl RedisWorkBackend {
    /// Pools on `conn`'s server, under its prefix.
    pub fn new(conn: RedisConnection) -> Self {
        Self {
            conn,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// Pools on the server at `url`, keys under `prefix`.
    pub fn open(url: &str, prefix: &str) -> Result<Self, RedisSetupError> {
        Ok(Self::new(RedisConnection::open(url, prefix)?))
    }

    /// The pool called `name`, with its concrete type.
    pub fn redis_pool(&self, name: &str) -> Arc<RedisWorkPool> {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(RedisWorkPool {
                    name: name.to_string(),
                    base: self.conn.key(&format!("work:{}:", seg(name))),
                    conn: self.conn.clone(),
                })
            })
            .clone()
    }
}

impl WorkBackend for RedisWorkBackend {
    fn pool(&self, name: &str) -> Arc<dyn WorkPool> {
        self.redis_pool(name)
    }
}

/// One pool of a [`RedisWorkBackend`].
#[derive(Debug)]
pub struct RedisWorkPool {
    name: String,
    /// `F:work:P:`.
    base: String,
    conn: RedisConnection,
}

fn parse_json(text: &str) -> Result<Value, DistributedError> {
    serde_json::from_str(text).map_err(|e| DistributedError::Data(e.to_string()))
}

fn to_json(value: &Value) -> Result<String, DistributedError> {
    serde_json::to_string(value).map_err(|e| DistributedError::Data(e.to_string()))
}

fn item_from_hash(
    id: String,
    mut h: HashMap<String, String>,
) -> Result<WorkItem, DistributedError> {
    let status = h.remove("status").unwrap_or_default();
    let number = |h: &HashMap<String, String>, f: &str| {
        h.get(f)
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or_default()
    };
    Ok(WorkItem {
        data: parse_json(h.get("data").map(String::as_str).unwrap_or("null"))?,
        claimed_by: h.remove("claimed_by"),
        claimed_at: h.remove("claimed_at"),
        attempts: number(&h, "attempts"),
        max_retries: number(&h, "max_retries"),
        status: JobStatus::parse(&status).ok_or_else(|| {
            DistributedError::Data(format!("work item `{id}` has unknown status `{status}`"))
        })?,
        created_at: h.remove("created_at").unwrap_or_default(),
        result: h.get("result").map(|r| parse_json(r)).transpose()?,
        error: h.remove("error"),
        id,
    })
}

fn not_claimed(id: &str, status: String) -> DistributedError {
    if status.is_empty() {
        DistributedError::JobNotFound(id.to_string())
    } else {
        DistributedError::NotClaimed {
            id: id.to_string(),
            status,
        }
    }
}

impl RedisWorkPool {
    fn worker_key(&self, worker: &str) -> String {
        format!("{}worker:{}", self.base, seg(worker))
    }

    /// Every job of the pool (any status), oldest first — for reports and tests.
    pub async fn all(&self) -> Result<Vec<WorkItem>, DistributedError> {
        let mut conn = self.conn.manager().await?;
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{}all", self.base))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let mut items = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HGETALL")
                    .arg(format!("{}job:{}", self.base, seg(id)));
            }
            let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
            for (id, h) in chunk.iter().zip(hashes) {
                if !h.is_empty() {
                    items.push(item_from_hash(id.clone(), h)?);
                }
            }
        }
        Ok(items)
    }
}

#[async_trait]
impl WorkPool for RedisWorkPool {
    fn name(&self) -> &str {
        &self.name
    }

    async fn push(&self, data: Value, options: PushOptions) -> Result<String, DistributedError> {
        let mut ids = self.push_many(vec![data], options).await?;
        ids.pop().ok_or_else(|| storage("push stored no job"))
    }

    async fn push_many(
        &self,
        data: Vec<Value>,
        options: PushOptions,
    ) -> Result<Vec<String>, DistributedError> {
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = PUSH.prepare_invoke();
        inv.key(&self.base).arg(now_iso()).arg(options.max_retries);
        let mut ids = Vec::with_capacity(data.len());
        for d in &data {
            let id = uuid::Uuid::new_v4().to_string();
            inv.arg(&id).arg(to_json(d)?);
            ids.push(id);
        }
        let mut conn = self.conn.manager().await?;
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(ids)
    }

    async fn claim(&self, worker_id: &str) -> Result<Option<WorkItem>, DistributedError> {
        Ok(self.claim_many(worker_id, 1).await?.pop())
    }

    async fn claim_many(
        &self,
        worker_id: &str,
        limit: usize,
    ) -> Result<Vec<WorkItem>, DistributedError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.manager().await?;
        let rows: Vec<(String, HashMap<String, String>)> = CLAIM
            .key(&self.base)
            .key(self.worker_key(worker_id))
            .arg(worker_id)
            .arg(now_iso())
            // `ZPOPMIN` takes a 64-bit count, Lua numbers are doubles: stay well inside both.
            .arg(limit.min(i32::MAX as usize))
            .invoke_async(&mut conn)
            .await?;
        rows.into_iter()
            .map(|(id, h)| item_from_hash(id, h))
            .collect()
    }

    async fn complete(&self, item_id: &str, result: Option<Value>) -> Result<(), DistributedError> {
        self.complete_many(vec![(item_id.to_string(), result)])
            .await
    }

    async fn complete_many(
        &self,
        results: Vec<(String, Option<Value>)>,
    ) -> Result<(), DistributedError> {
        if results.is_empty() {
            return Ok(());
        }
        let mut inv = COMPLETE.prepare_invoke();
        inv.key(&self.base).arg(now_iso());
        for (id, result) in &results {
            match result {
                Some(r) => inv.arg(id).arg("1").arg(to_json(r)?),
                None => inv.arg(id).arg("0").arg(""),
            };
        }
        let mut conn = self.conn.manager().await?;
        let reply: Vec<redis::Value> = inv.invoke_async(&mut conn).await?;
        match reply.as_slice() {
            [redis::Value::Int(0)] => Ok(()),
            [redis::Value::Int(1), id, status] => {
                let id: String = redis::from_redis_value(id)?;
                let status: String = redis::from_redis_value(status)?;
                Err(not_claimed(&id, status))
            }
            other => Err(storage(format!("unexpected complete reply {other:?}"))),
        }
    }

    async fn fail(
        &self,
        item_id: &str,
        error: Option<&str>,
    ) -> Result<JobStatus, DistributedError> {
        let mut conn = self.conn.manager().await?;
        let (code, status): (i64, String) = FAIL
            .key(&self.base)
            .key(format!("{}job:{}", self.base, seg(item_id)))
            .arg(item_id)
            .arg(if error.is_some() { "1" } else { "0" })
            .arg(error.unwrap_or(""))
            .invoke_async(&mut conn)
            .await?;
        if code != 0 {
            return Err(not_claimed(item_id, status));
        }
        JobStatus::parse(&status).ok_or_else(|| storage(format!("unexpected status `{status}`")))
    }

    async fn size(&self) -> Result<u64, DistributedError> {
        let mut conn = self.conn.manager().await?;
        Ok(redis::cmd("ZCARD")
            .arg(format!("{}pending", self.base))
            .query_async(&mut conn)
            .await?)
    }

    async fn release_by_worker(&self, worker_id: &str) -> Result<u64, DistributedError> {
        let mut conn = self.conn.manager().await?;
        Ok(RELEASE
            .key(&self.base)
            .key(self.worker_key(worker_id))
            .arg(worker_id)
            .arg(format!("worker `{worker_id}` was lost"))
            .invoke_async(&mut conn)
            .await?)
    }

    async fn get(&self, item_id: &str) -> Result<Option<WorkItem>, DistributedError> {
        let mut conn = self.conn.manager().await?;
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{}job:{}", self.base, seg(item_id)))
            .query_async(&mut conn)
            .await?;
        if h.is_empty() {
            return Ok(None);
        }
        item_from_hash(item_id.to_string(), h).map(Some)
    }

    async fn stats(&self) -> Result<PoolStats, DistributedError> {
        let mut conn = self.conn.manager().await?;
        let counts: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(format!("{}stats", self.base))
            .arg(&["pending", "claimed", "done", "poisoned"])
            .query_async(&mut conn)
            .await?;
        let n = |i: usize| {
            counts
                .get(i)
                .copied()
                .flatten()
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0)
        };
        Ok(PoolStats {
            pending: n(0),
            claimed: n(1),
            done: n(2),
            poisoned: n(3),
        })
    }
}
