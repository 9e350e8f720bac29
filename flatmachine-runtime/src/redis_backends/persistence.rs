//! Checkpoints in Redis, in the reference's key layout.
//!
//! A checkpoint key `K` (`{execution_id}/step_{step:06}_{event}.json`, or
//! `{execution_id}/latest`) is stored as the string `F:cp:K` (prefix `F`) holding exactly the
//! bytes [`LocalFileBackend`](crate::persistence::LocalFileBackend) writes to its file. Besides:
//!
//! * `F:cp-index` — sorted set of every stored key (all scores 0, so `list(prefix)` is a
//!   lexicographic range);
//! * `F:cp-exec:{execution_id}` — sorted set of the execution's checkpoint keys scored by step
//!   and event in run order, so pruning runs on the server;
//! * `F:cp-fence:{execution_id}` — the newest fencing token a checkpoint of the execution
//!   carried; `F:lock-fence:{execution_id}` is the counter [`RedisLock`](super::RedisLock)
//!   increments on every acquire.
//!
//! A save is one Lua script: snapshot + `latest` pointer + indexes together, after the fencing
//! check — a snapshot whose [`fencing_token`](MachineSnapshot::fencing_token) is older than the
//! newest token issued or recorded for its execution is refused with [`FencingError`], so a
//! runner whose lock lease expired cannot overwrite the checkpoints of the runner that took over.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use redis::Script;

use super::{RedisConnection, RedisSetupError};
use crate::lock::{HoldOps, LockError};
use crate::persistence::{
    BatchPart, EncodedCheckpoint, MachineSnapshot, PersistenceBackend, PersistenceError,
    checkpoint_event, parse_snapshot_key, validate_execution_id, validate_key,
};

/// A checkpoint refused because its fencing token is older than the execution's newest one:
/// the lock this runner held expired and another runner acquired it since.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "checkpoint `{key}` refused: it carries fencing token {token}, but the lock of execution `{execution_id}` has since issued token {newest} (this runner's lease expired and another runner took over; its checkpoints are kept)"
)]
pub struct FencingError {
    /// The execution.
    pub execution_id: String,
    /// The key the refused checkpoint was to be saved under.
    pub key: String,
    /// The token the refused snapshot carried.
    pub token: u64,
    /// The newest token issued (or recorded) for the execution.
    pub newest: u64,
}

/// KEYS = data key, index, exec zset (or ''), latest data key (or ''), lock counter, fence
/// record. ARGV = key, bytes, score (or ''), latest key (or ''), token (or '').
/// `{0}` saved; `{1, newest}` refused by the fencing check.
static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[5] ~= '' then
  local token = tonumber(ARGV[5])
  local issued = tonumber(redis.call('GET', KEYS[5]) or '0')
  local recorded = tonumber(redis.call('GET', KEYS[6]) or '0')
  local newest = math.max(issued, recorded)
  if token < newest then return {'1', tostring(newest)} end
  if token > recorded then redis.call('SET', KEYS[6], ARGV[5]) end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1]) end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[4], ARGV[1])
  redis.call('ZADD', KEYS[2], 0, ARGV[4])
end
return {'0'}
",
    )
});

/// KEYS = exec zset, index; ARGV = data key prefix (`F:cp:`), keep, saved key.
static PRUNE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if excess <= 0 then return 0 end
local n = 0
for _, key in ipairs(redis.call('ZRANGE', KEYS[1], 0, excess - 1)) do
  if key ~= ARGV[3] then
    redis.call('DEL', ARGV[1] .. key)
    redis.call('ZREM', KEYS[1], key)
    redis.call('ZREM', KEYS[2], key)
    n = n + 1
  end
end
return n
",
    )
});

/// The batches of one or more executions (parts), in one script.
///
/// KEYS = index, then per part: exec zset, latest data key, lock counter, fence record, lock
/// key (or ''). ARGV = data key prefix (`F:cp:`), the number of parts, then per part: token
/// (or ''), keep (or ''), lock value to release (or ''), latest key, lock value to acquire (or
/// ''), its lease ms (or ''), the number of texts `t`, the number of checkpoints `c`, then
/// (key, text) per text, then (key, bytes, score) per checkpoint, in run order.
///
/// Every part is checked before anything is written: `{1, newest, part}` a part refused by
/// the fencing check; `{2, '', part}` its lock to acquire is held by another runner; `{3,
/// issued, part}` its lock to acquire (for a fresh execution) had issued tokens before (the
/// counter counts the attempt). Nothing else is written unless `{0, released...}` (per part,
/// 1 when its lock was deleted).
static SAVE_BATCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local parts, a = {}, 3
for p = 1, tonumber(ARGV[2]) do
  local k = 2 + 5 * (p - 1)
  local part = {
    exec = KEYS[k], latest_data = KEYS[k + 1], counter = KEYS[k + 2], fence = KEYS[k + 3],
    lock = KEYS[k + 4], token = ARGV[a], keep = ARGV[a + 1], release = ARGV[a + 2],
    latest = ARGV[a + 3], acquire = ARGV[a + 4], lease = ARGV[a + 5],
    texts = a + 8, cps = a + 8 + 2 * tonumber(ARGV[a + 6])
  }
  a = part.cps + 3 * tonumber(ARGV[a + 7])
  part.last_arg = a - 1
  parts[p] = part
end
for p, part in ipairs(parts) do
  part.take = false
  if part.acquire ~= '' then
    local holder = redis.call('GET', part.lock)
    if not holder then
      local issued = tonumber(redis.call('GET', part.counter) or '0') + 1
      if issued ~= tonumber(part.token) then
        redis.call('INCR', part.counter)
        return {'3', tostring(issued), tostring(p)}
      end
      part.take = true
    elseif holder ~= part.acquire then
      return {'2', '', tostring(p)}
    end
  end
  if part.token ~= '' then
    local token = tonumber(part.token)
    local fences = redis.call('MGET', part.counter, part.fence)
    local issued = tonumber(fences[1] or '0')
    if part.take then issued = issued + 1 end
    part.recorded = tonumber(fences[2] or '0')
    if token < math.max(issued, part.recorded) then
      return {'1', tostring(math.max(issued, part.recorded)), tostring(p)}
    end
  end
end
-- Commands over many keys or members go in chunks (`unpack` has a limit); 1000 keeps pairs.
local function bulk(cmd, key, items)
  local i, n = 1, #items
  while i <= n do
    local j = math.min(i + 999, n)
    if key then
      redis.call(cmd, key, unpack(items, i, j))
    else
      redis.call(cmd, unpack(items, i, j))
    end
    i = j + 1
  end
end
local reply = {'0'}
for p, part in ipairs(parts) do
  if part.take then
    redis.call('SET', part.lock, part.acquire, 'NX', 'PX', part.lease)
    redis.call('INCR', part.counter)
  end
  if part.token ~= '' and tonumber(part.token) > part.recorded then
    redis.call('SET', part.fence, part.token)
  end
  local values, indexed, scored = {}, {}, {}
  for i = part.texts, part.cps - 1, 2 do
    values[#values + 1] = ARGV[1] .. ARGV[i]
    values[#values + 1] = ARGV[i + 1]
    indexed[#indexed + 1] = 0
    indexed[#indexed + 1] = ARGV[i]
  end
  local last
  for i = part.cps, part.last_arg, 3 do
    values[#values + 1] = ARGV[1] .. ARGV[i]
    values[#values + 1] = ARGV[i + 1]
    indexed[#indexed + 1] = 0
    indexed[#indexed + 1] = ARGV[i]
    scored[#scored + 1] = ARGV[i + 2]
    scored[#scored + 1] = ARGV[i]
    last = ARGV[i]
  end
  values[#values + 1] = part.latest_data
  values[#values + 1] = last
  indexed[#indexed + 1] = 0
  indexed[#indexed + 1] = part.latest
  bulk('MSET', nil, values)
  bulk('ZADD', KEYS[1], indexed)
  bulk('ZADD', part.exec, scored)
  if part.keep ~= '' then
    local doomed, data = {}, {}
    for _, key in ipairs(redis.call('ZRANGE', part.exec, 0, -1 - tonumber(part.keep))) do
      if key ~= last then
        doomed[#doomed + 1] = key
        data[#data + 1] = ARGV[1] .. key
      end
    end
    bulk('DEL', nil, data)
    bulk('ZREM', part.exec, doomed)
    bulk('ZREM', KEYS[1], doomed)
  end
  local released = '0'
  if part.release ~= '' and redis.call('GET', part.lock) == part.release then
    redis.call('DEL', part.lock)
    released = '1'
  end
  reply[#reply + 1] = released
end
return reply
",
    )
});

/// Checkpoint storage on a Redis server (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct RedisPersistence {
    conn: RedisConnection,
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> PersistenceError {
    PersistenceError::Other(Box::new(e))
}

impl RedisPersistence {
    /// Checkpoints on `conn`'s server, under its prefix.
    pub fn new(conn: RedisConnection) -> Self {
        Self { conn }
    }

    /// Checkpoints on the server at `url`, keys under `prefix`.
    pub fn open(url: &str, prefix: &str) -> Result<Self, RedisSetupError> {
        Ok(Self::new(RedisConnection::open(url, prefix)?))
    }

    fn data_key(&self, key: &str) -> String {
        self.conn.key(&format!("cp:{key}"))
    }

    fn index_key(&self) -> String {
        self.conn.key("cp-index")
    }

    fn exec_key(&self, execution_id: &str) -> String {
        self.conn.key(&format!("cp-exec:{execution_id}"))
    }

    /// The counter [`RedisLock`](super::RedisLock) increments for each acquire of `execution_id`.
    pub(crate) fn lock_fence_key(conn: &RedisConnection, execution_id: &str) -> String {
        conn.key(&format!("lock-fence:{execution_id}"))
    }

    async fn store(
        &self,
        key: &str,
        bytes: Vec<u8>,
        latest: Option<&str>,
        token: Option<u64>,
    ) -> Result<(), PersistenceError> {
        validate_key(key)?;
        if let Some(latest) = latest {
            validate_key(latest)?;
        }
        let parsed = parse_snapshot_key(key);
        let execution_id = parsed
            .map(|(id, _, _)| id)
            .or_else(|| key.split_once('/').map(|(id, _)| id))
            .unwrap_or(key);
        let (exec, score) = match parsed {
            Some((id, step, event)) => (
                self.exec_key(id),
                (step.saturating_mul(8) + u64::from(checkpoint_event::rank(event))).to_string(),
            ),
            None => (String::new(), String::new()),
        };
        let mut inv = SAVE.prepare_invoke();
        inv.key(self.data_key(key))
            .key(self.index_key())
            .key(exec)
            .key(latest.map(|l| self.data_key(l)).unwrap_or_default())
            .key(Self::lock_fence_key(&self.conn, execution_id))
            .key(self.conn.key(&format!("cp-fence:{execution_id}")))
            .arg(key)
            .arg(bytes)
            .arg(score)
            .arg(latest.unwrap_or(""))
            .arg(token.map(|t| t.to_string()).unwrap_or_default());
        let inv = &inv;
        let started = std::time::Instant::now();
        let reply: Vec<String> = self
            .conn
            .run("checkpoint save", |mut c, _| async move {
                inv.invoke_async(&mut c).await
            })
            .await
            .map_err(other)?;
        crate::distributed::metrics().checkpoint_saved(started.elapsed());
        match reply.as_slice() {
            [ok] if ok == "0" => Ok(()),
            [refused, newest] if refused == "1" => Err(other(FencingError {
                execution_id: execution_id.to_owned(),
                key: key.to_owned(),
                token: token.unwrap_or_default(),
                newest: newest.parse().unwrap_or_default(),
            })),
            _ => Err(PersistenceError::Other(
                format!("unexpected reply to a checkpoint save: {reply:?}").into(),
            )),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PersistenceError> {
        validate_key(key)?;
        let data_key = self.data_key(key);
        self.conn
            .run("checkpoint read", |mut c, _| {
                let data_key = data_key.clone();
                async move { redis::cmd("GET").arg(data_key).query_async(&mut c).await }
            })
            .await
            .map_err(other)
    }
}

impl RedisPersistence {
    /// Saves `checkpoints` (one execution's, in run order) with the `latest` pointer, then
    /// prunes to `keep`, in one script; with `lock`, the script first takes a pending hold and
    /// releases the hold at the end when asked.
    /// Saves `parts` (the batches of one or more executions) in one script, all or nothing.
    async fn store_batch(&self, parts: &[BatchPart<'_>]) -> Result<(), PersistenceError> {
        let parts: Vec<&BatchPart<'_>> =
            parts.iter().filter(|p| !p.checkpoints.is_empty()).collect();
        if parts.is_empty() {
            return Ok(());
        }
        let mut inv = SAVE_BATCH.prepare_invoke();
        inv.key(self.index_key())
            .arg(self.conn.key("cp:"))
            .arg(parts.len());
        for part in &parts {
            let last = part
                .checkpoints
                .last()
                .expect("parts without checkpoints are left out");
            let execution_id = last.execution_id();
            let token = last.fencing_token();
            let acquire = part.lock.filter(|ops| !ops.hold.is_acquired());
            let release = part.lock.filter(|ops| ops.release);
            inv.key(self.exec_key(execution_id))
                .key(self.data_key(last.latest_key()))
                .key(Self::lock_fence_key(&self.conn, execution_id))
                .key(self.conn.key(&format!("cp-fence:{execution_id}")))
                .key(
                    part.lock
                        .map(|_| super::lock::lock_key(&self.conn, execution_id))
                        .unwrap_or_default(),
                )
                .arg(token.map(|t| t.to_string()).unwrap_or_default())
                .arg(part.keep.map(|k| k.to_string()).unwrap_or_default())
                .arg(release.map(|ops| ops.hold.token()).unwrap_or(""))
                .arg(last.latest_key())
                .arg(acquire.map(|ops| ops.hold.token()).unwrap_or(""))
                .arg(
                    acquire
                        .map(|ops| ops.hold.lease_ms().max(1).to_string())
                        .unwrap_or_default(),
                )
                .arg(part.texts.len())
                .arg(part.checkpoints.len());
            for (key, text) in part.texts {
                validate_key(key)?;
                inv.arg(key).arg(text);
            }
            for c in &part.checkpoints {
                let score = c
                    .step()
                    .saturating_mul(8)
                    .saturating_add(u64::from(checkpoint_event::rank(c.event())));
                inv.arg(c.key()).arg(c.json()).arg(score);
            }
        }
        let inv = &inv;
        let started = std::time::Instant::now();
        let reply: Vec<String> = self
            .conn
            .run("checkpoint save", |mut c, _| async move {
                inv.invoke_async(&mut c).await
            })
            .await
            .map_err(other)?;
        let metrics = crate::distributed::metrics();
        for part in &parts {
            for _ in &part.checkpoints {
                metrics.checkpoint_saved(started.elapsed());
            }
        }
        let failed = |index: &str| {
            index
                .parse::<usize>()
                .ok()
                .and_then(|i| parts.get(i.checked_sub(1)?))
                .copied()
        };
        match reply.as_slice() {
            [ok, released @ ..] if ok == "0" && released.len() == parts.len() => {
                for (part, released) in parts.iter().zip(released) {
                    if let Some(ops) = part.lock.filter(|ops| !ops.hold.is_acquired()) {
                        ops.hold.mark_acquired();
                    }
                    if released == "1"
                        && let Some(ops) = part.lock.filter(|ops| ops.release)
                    {
                        ops.hold.mark_released();
                    }
                }
                Ok(())
            }
            [code, detail, index] if let Some(part) = failed(index) => {
                let first = part.checkpoints.first().expect("not empty");
                let execution_id = first.execution_id();
                match code.as_str() {
                    "1" => Err(other(FencingError {
                        execution_id: execution_id.to_owned(),
                        key: first.key().to_owned(),
                        token: first.fencing_token().unwrap_or_default(),
                        newest: detail.parse().unwrap_or_default(),
                    })),
                    "2" => Err(other(LockError::Held {
                        execution_id: execution_id.to_owned(),
                    })),
                    _ => Err(PersistenceError::Other(
                        format!(
                            "execution `{execution_id}` was started as new, but its lock has issued {detail} fencing token(s): another run of it exists (a runner whose lease expired, or an id used twice); nothing was saved"
                        )
                        .into(),
                    )),
                }
            }
            _ => Err(PersistenceError::Other(
                format!("unexpected reply to a checkpoint save: {reply:?}").into(),
            )),
        }
    }
}

#[async_trait]
impl PersistenceBackend for RedisPersistence {
    /// The loop's checkpoint stored as serialized (snapshot + `latest` in one script).
    async fn save_encoded(&self, checkpoint: EncodedCheckpoint) -> Result<(), PersistenceError> {
        self.store_batch(&[BatchPart {
            checkpoints: vec![checkpoint],
            texts: &[],
            keep: None,
            lock: None,
        }])
        .await
    }

    /// Every checkpoint, the pointer, the pruning and the lock's acquire or release in one
    /// script (one round trip).
    async fn save_encoded_batch(
        &self,
        checkpoints: Vec<EncodedCheckpoint>,
        texts: &[(String, String)],
        keep: Option<usize>,
        lock: Option<HoldOps<'_>>,
    ) -> Result<(), PersistenceError> {
        self.store_batch(&[BatchPart {
            checkpoints,
            texts,
            keep,
            lock,
        }])
        .await
    }

    fn saves_executions_together(&self) -> bool {
        true
    }

    /// Every part in one script (one round trip), all or nothing.
    async fn save_encoded_batches(
        &self,
        parts: Vec<BatchPart<'_>>,
    ) -> Result<(), PersistenceError> {
        self.store_batch(&parts).await
    }

    /// The server, database and key prefix ([`RedisLock`](super::RedisLock)s on the same
    /// connection settings share it).
    fn fencing_domain(&self) -> Option<String> {
        Some(self.conn.domain())
    }

    async fn save(&self, key: &str, snapshot: &MachineSnapshot) -> Result<(), PersistenceError> {
        self.store(
            key,
            snapshot.to_json_for(key)?,
            None,
            snapshot.fencing_token,
        )
        .await
    }

    async fn save_checkpoint(
        &self,
        key: &str,
        latest_key: &str,
        snapshot: Arc<MachineSnapshot>,
    ) -> Result<(), PersistenceError> {
        self.store(
            key,
            snapshot.to_json_for(key)?,
            Some(latest_key),
            snapshot.fencing_token,
        )
        .await
    }

    async fn prune_checkpoints(
        &self,
        execution_id: &str,
        saved: &str,
        keep: usize,
    ) -> Result<(), PersistenceError> {
        validate_execution_id(execution_id)?;
        let mut inv = PRUNE.prepare_invoke();
        inv.key(self.exec_key(execution_id))
            .key(self.index_key())
            .arg(self.conn.key("cp:"))
            .arg(keep)
            .arg(saved);
        let inv = &inv;
        let _: i64 = self
            .conn
            .run("checkpoint prune", |mut c, _| async move {
                inv.invoke_async(&mut c).await
            })
            .await
            .map_err(other)?;
        Ok(())
    }

    async fn load(&self, key: &str) -> Result<Option<MachineSnapshot>, PersistenceError> {
        let Some(bytes) = self.get(key).await? else {
            return Ok(None);
        };
        MachineSnapshot::from_json_slice(&bytes)
            .map(Some)
            .map_err(|e| PersistenceError::Corrupt {
                key: key.to_owned(),
                path: None,
                reason: e.to_string(),
            })
    }

    async fn save_text(&self, key: &str, text: &str) -> Result<(), PersistenceError> {
        self.store(key, text.as_bytes().to_vec(), None, None).await
    }

    async fn load_text(&self, key: &str) -> Result<Option<String>, PersistenceError> {
        let Some(bytes) = self.get(key).await? else {
            return Ok(None);
        };
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| PersistenceError::Corrupt {
                key: key.to_owned(),
                path: None,
                reason: "not UTF-8".to_owned(),
            })
    }

    async fn delete(&self, key: &str) -> Result<(), PersistenceError> {
        validate_key(key)?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(self.data_key(key))
            .cmd("ZREM")
            .arg(self.index_key())
            .arg(key);
        if let Some((id, _, _)) = parse_snapshot_key(key) {
            pipe.cmd("ZREM").arg(self.exec_key(id)).arg(key);
        }
        let pipe = &pipe;
        self.conn
            .run("checkpoint delete", |mut c, _| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await
            .map_err(other)
    }

    async fn execution_ids_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, PersistenceError> {
        // The index is sorted by key: read it in batches from just past `after`'s pointer (the
        // ids come in the order of their pointers' keys, the same on every page).
        const BATCH: usize = 2000;
        let mut ids = Vec::new();
        let mut min = match after {
            Some(a) => {
                let mut m = b"(".to_vec();
                m.extend_from_slice(a.as_bytes());
                m.extend_from_slice(b"/latest");
                m
            }
            None => b"-".to_vec(),
        };
        while ids.len() < limit {
            let mut cmd = redis::cmd("ZRANGEBYLEX");
            cmd.arg(self.index_key())
                .arg(&min)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(BATCH);
            let cmd = &cmd;
            let keys: Vec<String> = self
                .conn
                .run("checkpoint list", |mut c, _| async move {
                    cmd.query_async(&mut c).await
                })
                .await
                .map_err(other)?;
            for key in &keys {
                if let Some(id) = key.strip_suffix("/latest")
                    && !id.contains('/')
                    && ids.len() < limit
                {
                    ids.push(id.to_owned());
                }
            }
            match keys.last() {
                Some(last) if keys.len() == BATCH => {
                    min = b"(".to_vec();
                    min.extend_from_slice(last.as_bytes());
                }
                _ => break,
            }
        }
        Ok(ids)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, PersistenceError> {
        let mut min = b"[".to_vec();
        min.extend_from_slice(prefix.as_bytes());
        let mut max = min.clone();
        max.push(0xff);
        let mut cmd = redis::cmd("ZRANGEBYLEX");
        cmd.arg(self.index_key()).arg(min).arg(max);
        let cmd = &cmd;
        self.conn
            .run("checkpoint list", |mut c, _| async move {
                cmd.query_async(&mut c).await
            })
            .await
            .map_err(other)
    }
}
