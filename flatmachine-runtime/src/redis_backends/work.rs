//! Work pools in Redis.
//!
//! Keys of pool `P` (prefix `F`; in names, `%` and `:` are percent-encoded):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `F:work:P:job:{id}` | hash | `data`, `status`, `claimed_by`, `claimed_at`, `attempts`, `max_retries`, `created_at`, `seq`, `result`, `error`, `completed_at`; while claimed `token`, `lease_until` (ms), `execution`; `settled_token` / `settled_status` of the last completion or failure; `previous_execution` of the last claim taken back |
//! | `F:work:P:pending` | sorted set | pending job ids, scored by push order (claims pop the lowest) |
//! | `F:work:P:leases` | sorted set | claimed job ids, scored by lease end (ms, server clock) |
//! | `F:work:P:poisoned` | sorted set | poisoned job ids, by push order |
//! | `F:work:P:all` | sorted set | every job id, by push order |
//! | `F:work:P:worker:{w}` | set | the ids worker `w` holds (for `release_worker`) |
//! | `F:work:P:stats` | hash | counts by status; `released`, `expired`, `requeued`, `removed` |
//! | `F:work:P:seq` | string | push counter |
//! | `F:work-pools` | set | pool names |
//!
//! Every operation is one Lua script, so a claim (`ZPOPMIN` + status change + token + lease +
//! the worker's set) is atomic across processes and hosts; a job goes back to its old place in
//! the queue when it fails or is taken back, as with SQLite. Leases are measured on the
//! server's clock (`TIME`), so hosts' clocks do not matter for them.
//!
//! Every script is safe to repeat after a lost reply (see
//! [`RetryPolicy`](super::RetryPolicy)): a repeated claim (same token) returns the jobs the
//! first one claimed; a repeated completion or failure finds its own token in `settled_token`
//! and reports what the first one did; a repeated push skips ids already stored.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{LUA_ESC, RedisCallError, RedisConnection, RedisSetupError, seg};
use crate::Value;
use crate::distributed::time::iso_ms;
use crate::distributed::{
    Claim, ClaimRequest, ClaimToken, DistributedError, JobStatus, PoolCounters, PoolStats,
    PushOptions, ReleasedJob, WorkBackend, WorkItem, WorkPool, now_iso,
};

pub(crate) fn storage(e: impl std::fmt::Display) -> DistributedError {
    DistributedError::Storage(format!("redis: {e}"))
}

impl From<redis::RedisError> for DistributedError {
    fn from(e: redis::RedisError) -> Self {
        storage(e)
    }
}

impl From<RedisCallError> for DistributedError {
    fn from(e: RedisCallError) -> Self {
        DistributedError::Storage(e.to_string())
    }
}

/// Lua: the server's clock in ms, and taking a claimed job back (to pending, or poisoned when
/// its attempts are used up). Returns `{id, worker or '', execution or '', new status}`.
const LUA_COMMON: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function take_back(base, id, why)
  local k = base .. 'job:' .. esc(id)
  local f = redis.call('HMGET', k, 'status', 'claimed_by', 'execution', 'attempts', 'max_retries', 'seq')
  if f[1] ~= 'claimed' then return nil end
  local worker = f[2] or ''
  if worker ~= '' then redis.call('SREM', base .. 'worker:' .. esc(worker), id) end
  redis.call('ZREM', base .. 'leases', id)
  redis.call('HDEL', k, 'token', 'lease_until', 'execution')
  if f[3] then redis.call('HSET', k, 'previous_execution', f[3]) end
  redis.call('HINCRBY', base .. 'stats', 'claimed', -1)
  if tonumber(f[4]) >= tonumber(f[5]) then
    redis.call('HSET', k, 'status', 'poisoned', 'error', why)
    redis.call('ZADD', base .. 'poisoned', f[6], id)
    redis.call('HINCRBY', base .. 'stats', 'poisoned', 1)
    return {id, worker, f[3] or '', 'poisoned'}
  end
  redis.call('HSET', k, 'status', 'pending')
  redis.call('HDEL', k, 'claimed_by', 'claimed_at')
  redis.call('ZADD', base .. 'pending', f[6], id)
  redis.call('HINCRBY', base .. 'stats', 'pending', 1)
  return {id, worker, f[3] or '', 'pending'}
end
";

/// KEYS[1] = pool base (`F:work:P:`), KEYS[2] = pool name set; ARGV = pool name, now,
/// max_retries, then (id, data) pairs. Ids already stored are skipped (a repeated push).
static PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_ESC}
local base = KEYS[1]
local n = 0
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local k = base .. 'job:' .. esc(id)
  if redis.call('EXISTS', k) == 0 then
    local seq = redis.call('INCR', base .. 'seq')
    redis.call('HSET', k, 'data', ARGV[i + 1], 'status', 'pending',
      'attempts', 0, 'max_retries', ARGV[3], 'created_at', ARGV[2], 'seq', seq)
    redis.call('ZADD', base .. 'pending', seq, id)
    redis.call('ZADD', base .. 'all', seq, id)
    n = n + 1
  end
end
redis.call('HINCRBY', base .. 'stats', 'pending', n)
redis.call('SADD', KEYS[2], ARGV[1])
return n
"
    ))
});

/// KEYS[1] = pool base, KEYS[2] = the worker's set; ARGV = worker, now (ISO), limit, token,
/// lease ms, execution (or ''), repeat (1 when this may repeat a claim whose reply was lost).
/// Returns `[id, HGETALL...]` per claimed job.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_ESC}{LUA_COMMON}
local base = KEYS[1]
local out = {{}}
if ARGV[7] == '1' then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local k = base .. 'job:' .. esc(id)
    if redis.call('HGET', k, 'token') == ARGV[4] then
      out[#out + 1] = {{id, redis.call('HGETALL', k)}}
    end
  end
  if #out > 0 then return out end
end
local popped = redis.call('ZPOPMIN', base .. 'pending', tonumber(ARGV[3]))
local lease_end = now_ms() + tonumber(ARGV[5])
for i = 1, #popped, 2 do
  local id = popped[i]
  local k = base .. 'job:' .. esc(id)
  redis.call('HSET', k, 'status', 'claimed', 'claimed_by', ARGV[1], 'claimed_at', ARGV[2],
    'token', ARGV[4], 'lease_until', lease_end)
  if ARGV[6] ~= '' then redis.call('HSET', k, 'execution', ARGV[6]) else redis.call('HDEL', k, 'execution') end
  redis.call('HINCRBY', k, 'attempts', 1)
  redis.call('SADD', KEYS[2], id)
  redis.call('ZADD', base .. 'leases', lease_end, id)
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

/// Lua: whether the job hash `k` is held by `token`. `nil` if it is; else the error reply:
/// `{1, status}` not claimed (`''`: no such job), `{2, holder}` another claim holds it,
/// `{3, settled status}` this token already settled it (a repeated call).
const LUA_HELD: &str = r"
local function check_held(k, token)
  local f = redis.call('HMGET', k, 'status', 'token', 'claimed_by', 'settled_token', 'settled_status')
  if f[1] == 'claimed' and f[2] == token then return nil end
  if f[4] == token then return {3, f[5] or ''} end
  if not f[1] then return {1, ''} end
  if f[1] == 'claimed' then return {2, f[3] or ''} end
  return {1, f[1]}
end
";

/// KEYS[1] = pool base; ARGV = now (ISO), repeat (1 when this may repeat a call whose reply was
/// lost), then (id, token, has_result, result) quads. All or nothing: `{code, id, detail}` for
/// the first job not held (see `LUA_HELD`; code 3 is no error on a repeat), else `{0}`.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_ESC}{LUA_HELD}
local base = KEYS[1]
local todo = {{}}
for i = 3, #ARGV, 4 do
  local k = base .. 'job:' .. esc(ARGV[i])
  local bad = check_held(k, ARGV[i + 1])
  if bad then
    if bad[1] ~= 3 or ARGV[2] ~= '1' then return {{bad[1], ARGV[i], bad[2]}} end
  else
    todo[#todo + 1] = i
  end
end
for _, i in ipairs(todo) do
  local id = ARGV[i]
  local k = base .. 'job:' .. esc(id)
  local worker = redis.call('HGET', k, 'claimed_by')
  if worker then redis.call('SREM', base .. 'worker:' .. esc(worker), id) end
  redis.call('ZREM', base .. 'leases', id)
  redis.call('HSET', k, 'status', 'done', 'completed_at', ARGV[1],
    'settled_token', ARGV[i + 1], 'settled_status', 'done')
  redis.call('HDEL', k, 'lease_until', 'error')
  if ARGV[i + 2] == '1' then
    redis.call('HSET', k, 'result', ARGV[i + 3])
  else
    redis.call('HDEL', k, 'result')
  end
end
if #todo > 0 then
  redis.call('HINCRBY', base .. 'stats', 'claimed', -#todo)
  redis.call('HINCRBY', base .. 'stats', 'done', #todo)
end
return {{0}}
"
    ))
});

/// KEYS[1] = pool base, KEYS[2] = job key; ARGV = id, token, has_error, error.
/// `{0, new status}`, or `{code, detail}` (see `LUA_HELD`).
static FAIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_ESC}{LUA_HELD}
local base, k = KEYS[1], KEYS[2]
local bad = check_held(k, ARGV[2])
if bad then return bad end
if ARGV[3] == '1' then redis.call('HSET', k, 'error', ARGV[4]) else redis.call('HDEL', k, 'error') end
local worker = redis.call('HGET', k, 'claimed_by')
if worker then redis.call('SREM', base .. 'worker:' .. esc(worker), ARGV[1]) end
redis.call('ZREM', base .. 'leases', ARGV[1])
redis.call('HDEL', k, 'lease_until', 'execution')
redis.call('HINCRBY', base .. 'stats', 'claimed', -1)
local f = redis.call('HMGET', k, 'attempts', 'max_retries', 'seq')
if tonumber(f[1]) >= tonumber(f[2]) then
  redis.call('HSET', k, 'status', 'poisoned', 'settled_token', ARGV[2], 'settled_status', 'poisoned')
  redis.call('ZADD', base .. 'poisoned', f[3], ARGV[1])
  redis.call('HINCRBY', base .. 'stats', 'poisoned', 1)
  return {{0, 'poisoned'}}
end
redis.call('HSET', k, 'status', 'pending', 'settled_token', ARGV[2], 'settled_status', 'pending')
redis.call('HDEL', k, 'claimed_by', 'claimed_at', 'token')
redis.call('ZADD', base .. 'pending', f[3], ARGV[1])
redis.call('HINCRBY', base .. 'stats', 'pending', 1)
return {{0, 'pending'}}
"
    ))
});

/// KEYS[1] = pool base, KEYS[2] = job key; ARGV = id, token, extend ms (or '').
/// `{0}`, or `{code, detail}` (see `LUA_HELD`).
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_ESC}{LUA_COMMON}{LUA_HELD}
local base, k = KEYS[1], KEYS[2]
local bad = check_held(k, ARGV[2])
if bad then return bad end
if ARGV[3] ~= '' then
  local lease_end = now_ms() + tonumber(ARGV[3])
  if lease_end > tonumber(redis.call('HGET', k, 'lease_until') or '0') then
    redis.call('HSET', k, 'lease_until', lease_end)
    redis.call('ZADD', base .. 'leases', lease_end, ARGV[1])
  end
end
return {{0}}
"
    ))
});

/// KEYS[1] = pool base, KEYS[2] = the worker's set; ARGV = worker, lost message.
/// Returns `take_back` tuples.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_ESC}{LUA_COMMON}
local base = KEYS[1]
local out = {{}}
local held = {{}}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local f = redis.call('HMGET', base .. 'job:' .. esc(id), 'claimed_by', 'seq')
  if f[1] == ARGV[1] then held[#held + 1] = {{tonumber(f[2]), id}} end
end
table.sort(held, function(a, b) return a[1] < b[1] end)
for _, h in ipairs(held) do
  local r = take_back(base, h[2], ARGV[2])
  if r then out[#out + 1] = r end
end
redis.call('DEL', KEYS[2])
if #out > 0 then redis.call('HINCRBY', base .. 'stats', 'released', #out) end
return out
"
    ))
});

/// KEYS[1] = pool base; ARGV = message. Takes back claims whose lease ended (server clock).
static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_ESC}{LUA_COMMON}
local base = KEYS[1]
local out = {{}}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', base .. 'leases', '-inf', now_ms())) do
  local r = take_back(base, id, ARGV[1])
  if r then out[#out + 1] = r else redis.call('ZREM', base .. 'leases', id) end
end
if #out > 0 then redis.call('HINCRBY', base .. 'stats', 'expired', #out) end
return out
"
    ))
});

/// KEYS[1] = pool base; ARGV = ids. Poisoned → pending (attempts 0); claimed → pending (claim
/// revoked). Returns `{id, worker or '', execution or ''}` per job requeued.
static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_ESC}
local base = KEYS[1]
local out = {{}}
for _, id in ipairs(ARGV) do
  local k = base .. 'job:' .. esc(id)
  local f = redis.call('HMGET', k, 'status', 'claimed_by', 'execution', 'seq')
  if f[1] == 'poisoned' or f[1] == 'claimed' then
    if f[1] == 'poisoned' then
      redis.call('ZREM', base .. 'poisoned', id)
      redis.call('HSET', k, 'attempts', 0)
      redis.call('HINCRBY', base .. 'stats', 'poisoned', -1)
    else
      if f[2] then redis.call('SREM', base .. 'worker:' .. esc(f[2]), id) end
      if f[3] then redis.call('HSET', k, 'previous_execution', f[3]) end
      redis.call('ZREM', base .. 'leases', id)
      redis.call('HINCRBY', base .. 'stats', 'claimed', -1)
    end
    redis.call('HSET', k, 'status', 'pending')
    redis.call('HDEL', k, 'claimed_by', 'claimed_at', 'token', 'lease_until', 'execution')
    redis.call('ZADD', base .. 'pending', f[4], id)
    redis.call('HINCRBY', base .. 'stats', 'pending', 1)
    out[#out + 1] = {{id, f[2] or '', f[3] or ''}}
  end
end
if #out > 0 then redis.call('HINCRBY', base .. 'stats', 'requeued', #out) end
return out
"
    ))
});

/// KEYS[1] = pool base; ARGV = ids. Deletes the poisoned ones; returns how many.
static REMOVE_POISONED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LUA_ESC}
local base = KEYS[1]
local n = 0
for _, id in ipairs(ARGV) do
  local k = base .. 'job:' .. esc(id)
  if redis.call('HGET', k, 'status') == 'poisoned' then
    redis.call('DEL', k)
    redis.call('ZREM', base .. 'poisoned', id)
    redis.call('ZREM', base .. 'all', id)
    n = n + 1
  end
end
if n > 0 then
  redis.call('HINCRBY', base .. 'stats', 'poisoned', -n)
  redis.call('HINCRBY', base .. 'stats', 'removed', n)
end
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

#[async_trait]
impl WorkBackend for RedisWorkBackend {
    fn pool(&self, name: &str) -> Arc<dyn WorkPool> {
        self.redis_pool(name)
    }

    async fn pool_names(&self) -> Result<Vec<String>, DistributedError> {
        let key = self.conn.key("work-pools");
        let mut names: Vec<String> = self
            .conn
            .run("pool list", |mut c, _| {
                let key = key.clone();
                async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await }
            })
            .await?;
        names.sort();
        Ok(names)
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
        claim_token: match h.remove("token") {
            Some(t) => Some(ClaimToken::parse(&t)?),
            // A done job keeps the token of the claim that completed it.
            None if status == "done" => h
                .remove("settled_token")
                .and_then(|t| ClaimToken::parse(&t).ok()),
            None => None,
        },
        lease_expires_at: h
            .get("lease_until")
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(iso_ms),
        execution_id: h.remove("execution"),
        previous_execution_id: h.remove("previous_execution"),
        id,
    })
}

/// The error for a `{code, detail}` reply of `LUA_HELD`.
fn not_held(id: &str, code: i64, detail: String) -> DistributedError {
    match code {
        2 => DistributedError::NotHolder {
            id: id.to_string(),
            holder: (!detail.is_empty()).then_some(detail),
        },
        _ if detail.is_empty() => DistributedError::JobNotFound(id.to_string()),
        _ => DistributedError::NotClaimed {
            id: id.to_string(),
            status: detail,
        },
    }
}

fn released(rows: Vec<(String, String, String, String)>) -> Vec<ReleasedJob> {
    rows.into_iter()
        .map(|(id, worker, execution, status)| ReleasedJob {
            id,
            worker_id: (!worker.is_empty()).then_some(worker),
            execution_id: (!execution.is_empty()).then_some(execution),
            status: JobStatus::parse(&status).unwrap_or(JobStatus::Pending),
        })
        .collect()
}

impl RedisWorkPool {
    fn worker_key(&self, worker: &str) -> String {
        format!("{}worker:{}", self.base, seg(worker))
    }

    fn job_key(&self, id: &str) -> String {
        format!("{}job:{}", self.base, seg(id))
    }

    /// The jobs `ids` (in order; missing ones skipped), 500 per round trip.
    async fn items(&self, ids: &[String]) -> Result<Vec<WorkItem>, DistributedError> {
        let mut items = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|id| self.job_key(id)).collect();
            let hashes: Vec<HashMap<String, String>> = self
                .conn
                .run("job read", |mut c, _| {
                    let mut pipe = redis::pipe();
                    for k in &keys {
                        pipe.cmd("HGETALL").arg(k);
                    }
                    async move { pipe.query_async(&mut c).await }
                })
                .await?;
            for (id, h) in chunk.iter().zip(hashes) {
                if !h.is_empty() {
                    items.push(item_from_hash(id.clone(), h)?);
                }
            }
        }
        Ok(items)
    }

    /// Ids in the sorted set `F:work:P:{set}`, from `start` to `stop` (ranks, inclusive).
    async fn range(
        &self,
        set: &str,
        start: i64,
        stop: i64,
    ) -> Result<Vec<String>, DistributedError> {
        let key = format!("{}{set}", self.base);
        Ok(self
            .conn
            .run("job list", |mut c, _| {
                let key = key.clone();
                async move {
                    redis::cmd("ZRANGE")
                        .arg(key)
                        .arg(start)
                        .arg(stop)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?)
    }

    /// Every job of the pool (any status), oldest first — for reports and tests.
    pub async fn all(&self) -> Result<Vec<WorkItem>, DistributedError> {
        let ids = self.range("all", 0, -1).await?;
        self.items(&ids).await
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
        inv.key(&self.base)
            .key(self.conn.key("work-pools"))
            .arg(&self.name)
            .arg(now_iso())
            .arg(options.max_retries);
        let mut ids = Vec::with_capacity(data.len());
        for d in &data {
            let id = uuid::Uuid::new_v4().to_string();
            inv.arg(&id).arg(to_json(d)?);
            ids.push(id);
        }
        let inv = &inv;
        let _: i64 = self
            .conn
            .run(
                "push",
                |mut c, _| async move { inv.invoke_async(&mut c).await },
            )
            .await?;
        Ok(ids)
    }

    async fn claim_with(&self, request: &ClaimRequest) -> Result<Vec<WorkItem>, DistributedError> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        let (worker_key, now) = (self.worker_key(&request.worker_id), now_iso());
        // `ZPOPMIN` takes a 64-bit count, Lua numbers are doubles: stay well inside both.
        let limit = request.limit.min(i32::MAX as usize);
        let rows: Vec<(String, HashMap<String, String>)> = self
            .conn
            .run("claim", |mut c, attempt| {
                let mut inv = CLAIM.prepare_invoke();
                inv.key(&self.base)
                    .key(&worker_key)
                    .arg(&request.worker_id)
                    .arg(&now)
                    .arg(limit)
                    .arg(request.token.as_str())
                    .arg(request.lease_ms())
                    .arg(request.execution_id.as_deref().unwrap_or(""))
                    .arg(if attempt > 0 { "1" } else { "0" });
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        rows.into_iter()
            .map(|(id, h)| item_from_hash(id, h))
            .collect()
    }

    async fn complete(&self, claim: &Claim, result: Option<Value>) -> Result<(), DistributedError> {
        self.complete_many(vec![(claim.clone(), result)]).await
    }

    async fn complete_many(
        &self,
        results: Vec<(Claim, Option<Value>)>,
    ) -> Result<(), DistributedError> {
        if results.is_empty() {
            return Ok(());
        }
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(results.len() * 4);
        for (claim, result) in &results {
            args.push(claim.job_id.clone().into_bytes());
            args.push(claim.token.as_str().as_bytes().to_vec());
            match result {
                Some(r) => {
                    args.push(b"1".to_vec());
                    args.push(to_json(r)?.into_bytes());
                }
                None => {
                    args.push(b"0".to_vec());
                    args.push(Vec::new());
                }
            }
        }
        let now = now_iso();
        let reply: Vec<redis::Value> = self
            .conn
            .run("complete", |mut c, attempt| {
                let mut inv = COMPLETE.prepare_invoke();
                inv.key(&self.base)
                    .arg(&now)
                    .arg(if attempt > 0 { "1" } else { "0" });
                for a in &args {
                    inv.arg(a.as_slice());
                }
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        match reply.as_slice() {
            [redis::Value::Int(0)] => Ok(()),
            [redis::Value::Int(code), id, detail] => {
                let id: String = redis::from_redis_value(id)?;
                let detail: String = redis::from_redis_value(detail)?;
                Err(not_held(&id, *code, detail))
            }
            other => Err(storage(format!("unexpected complete reply {other:?}"))),
        }
    }

    async fn fail(
        &self,
        claim: &Claim,
        error: Option<&str>,
    ) -> Result<JobStatus, DistributedError> {
        let job_key = self.job_key(&claim.job_id);
        let (code, detail, attempt): (i64, String, u32) = self
            .conn
            .run("fail", |mut c, attempt| {
                let mut inv = FAIL.prepare_invoke();
                inv.key(&self.base)
                    .key(&job_key)
                    .arg(&claim.job_id)
                    .arg(claim.token.as_str())
                    .arg(if error.is_some() { "1" } else { "0" })
                    .arg(error.unwrap_or(""));
                async move {
                    let (code, detail): (i64, String) = inv.invoke_async(&mut c).await?;
                    Ok((code, detail, attempt))
                }
            })
            .await?;
        match code {
            0 => {}
            // This claim already failed the job: a repeat whose first reply was lost.
            3 if attempt > 0 => {}
            _ => return Err(not_held(&claim.job_id, code, detail)),
        }
        JobStatus::parse(&detail).ok_or_else(|| storage(format!("unexpected status `{detail}`")))
    }

    async fn heartbeat(
        &self,
        claim: &Claim,
        extend_lease: Option<Duration>,
    ) -> Result<(), DistributedError> {
        let job_key = self.job_key(&claim.job_id);
        let extend = extend_lease
            .map(|d| {
                u64::try_from(d.as_millis())
                    .unwrap_or(u64::MAX)
                    .min(1 << 50)
                    .to_string()
            })
            .unwrap_or_default();
        let reply: Vec<redis::Value> = self
            .conn
            .run("job heartbeat", |mut c, _| {
                let mut inv = HEARTBEAT.prepare_invoke();
                inv.key(&self.base)
                    .key(&job_key)
                    .arg(&claim.job_id)
                    .arg(claim.token.as_str())
                    .arg(&extend);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        match reply.as_slice() {
            [redis::Value::Int(0)] => Ok(()),
            [redis::Value::Int(code), detail] => {
                let detail: String = redis::from_redis_value(detail)?;
                Err(not_held(&claim.job_id, *code, detail))
            }
            other => Err(storage(format!("unexpected heartbeat reply {other:?}"))),
        }
    }

    async fn size(&self) -> Result<u64, DistributedError> {
        let key = format!("{}pending", self.base);
        Ok(self
            .conn
            .run("pool size", |mut c, _| {
                let key = key.clone();
                async move { redis::cmd("ZCARD").arg(key).query_async(&mut c).await }
            })
            .await?)
    }

    async fn release_worker(&self, worker_id: &str) -> Result<Vec<ReleasedJob>, DistributedError> {
        let worker_key = self.worker_key(worker_id);
        let lost = format!("worker `{worker_id}` was lost");
        let rows: Vec<(String, String, String, String)> = self
            .conn
            .run("release", |mut c, _| {
                let mut inv = RELEASE.prepare_invoke();
                inv.key(&self.base)
                    .key(&worker_key)
                    .arg(worker_id)
                    .arg(&lost);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(released(rows))
    }

    async fn reclaim_expired(&self) -> Result<Vec<ReleasedJob>, DistributedError> {
        let rows: Vec<(String, String, String, String)> = self
            .conn
            .run("reclaim", |mut c, _| {
                let mut inv = RECLAIM.prepare_invoke();
                inv.key(&self.base).arg("its lease expired");
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(released(rows))
    }

    async fn get(&self, item_id: &str) -> Result<Option<WorkItem>, DistributedError> {
        Ok(self.items(&[item_id.to_string()]).await?.pop())
    }

    async fn jobs(
        &self,
        status: JobStatus,
        limit: usize,
    ) -> Result<Vec<WorkItem>, DistributedError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stop = i64::try_from(limit).unwrap_or(i64::MAX).saturating_sub(1);
        let set = match status {
            JobStatus::Pending => "pending",
            JobStatus::Claimed => "leases",
            JobStatus::Poisoned => "poisoned",
            JobStatus::Done => {
                // No index of done jobs: walk every job in push order.
                let mut out = Vec::new();
                let mut start = 0i64;
                loop {
                    let ids = self.range("all", start, start + 499).await?;
                    if ids.is_empty() {
                        return Ok(out);
                    }
                    start += ids.len() as i64;
                    for item in self.items(&ids).await? {
                        if item.status == JobStatus::Done {
                            out.push(item);
                            if out.len() >= limit {
                                return Ok(out);
                            }
                        }
                    }
                }
            }
        };
        let ids = self.range(set, 0, stop).await?;
        Ok(self
            .items(&ids)
            .await?
            .into_iter()
            .filter(|i| i.status == status)
            .collect())
    }

    async fn requeue(&self, ids: &[String]) -> Result<Vec<ReleasedJob>, DistributedError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, String)> = self
            .conn
            .run("requeue", |mut c, _| {
                let mut inv = REQUEUE.prepare_invoke();
                inv.key(&self.base);
                for id in ids {
                    inv.arg(id);
                }
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, worker, execution)| ReleasedJob {
                id,
                worker_id: (!worker.is_empty()).then_some(worker),
                execution_id: (!execution.is_empty()).then_some(execution),
                status: JobStatus::Pending,
            })
            .collect())
    }

    async fn remove_poisoned(&self, ids: &[String]) -> Result<u64, DistributedError> {
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(self
            .conn
            .run("remove", |mut c, _| {
                let mut inv = REMOVE_POISONED.prepare_invoke();
                inv.key(&self.base);
                for id in ids {
                    inv.arg(id);
                }
                async move { inv.invoke_async(&mut c).await }
            })
            .await?)
    }

    async fn stats(&self) -> Result<PoolStats, DistributedError> {
        let n = self
            .stat_fields(&["pending", "claimed", "done", "poisoned"])
            .await?;
        Ok(PoolStats {
            pending: n[0],
            claimed: n[1],
            done: n[2],
            poisoned: n[3],
        })
    }

    async fn counters(&self) -> Result<PoolCounters, DistributedError> {
        let n = self
            .stat_fields(&["released", "expired", "requeued", "removed"])
            .await?;
        Ok(PoolCounters {
            released: n[0],
            expired: n[1],
            requeued: n[2],
            removed: n[3],
        })
    }
}

impl RedisWorkPool {
    /// Fields of the pool's `stats` hash (0 when absent).
    async fn stat_fields(&self, fields: &[&str; 4]) -> Result<[u64; 4], DistributedError> {
        let key = format!("{}stats", self.base);
        let counts: Vec<Option<i64>> = self
            .conn
            .run("pool stats", |mut c, _| {
                let key = key.clone();
                async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg(fields)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        let n = |i: usize| {
            counts
                .get(i)
                .copied()
                .flatten()
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0)
        };
        Ok([n(0), n(1), n(2), n(3)])
    }
}
