//! `RedisSignalBackend` (feature `redis`): signals and waiters on a Redis server, for runs and
//! dispatchers on many hosts.
//!
//! Keys, below `{prefix}:sig:` (channel names and execution ids percent-encoded as one segment):
//!
//! * `q:{channel}` — a list of the channel's signals, oldest first; each entry is
//!   `{expires_ms}|{signal JSON}` (`expires_ms` empty when the signal never expires);
//! * `channels` — the set of channels whose list is not empty;
//! * `w:{execution_id}` — a waiter (hash: `channel`, `machine`, `state`, `step`, `deadline`,
//!   `registered`, `seq`, and `delivered` / `claimed_by` / `claim_until` when set);
//! * `waiters` and `wch:{channel}` — sorted sets of waiting execution ids by registration order,
//!   all and per channel; `seq` — the registration counter.
//!
//! Every change is one Lua script, so it is atomic on the server; signal JSON is moved between
//! keys as text, never decoded by Lua (numbers keep every digit). Times come from the calling
//! process's clock ([`now_millis`](super::now_millis)), so hosts should keep their clocks in
//! sync (NTP) for deadlines and lifetimes to agree.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::clock::{iso_from_millis, millis_after, now_millis};
use super::{
    SendOptions, Signal, SignalBackend, SignalError, WaitRequest, Waiter, encode_data,
    new_signal_id, validate_channel,
};
use crate::Value;
use crate::redis_backends::{LUA_ESC, RedisConnection, seg};

/// Lua: takes the oldest live signal of a channel (dropping expired ones), keeping the
/// `channels` set in step. Returns the signal JSON or `false`.
const LUA_TAKE: &str = r"
local function take(base, channel, now)
  local q = base .. 'q:' .. esc(channel)
  while true do
    local e = redis.call('LPOP', q)
    if not e then
      redis.call('SREM', base .. 'channels', channel)
      return false
    end
    local bar = string.find(e, '|', 1, true)
    local exp = string.sub(e, 1, bar - 1)
    if exp == '' or tonumber(exp) > now then
      if redis.call('LLEN', q) == 0 then redis.call('SREM', base .. 'channels', channel) end
      return string.sub(e, bar + 1)
    end
  end
end
";

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_ESC}{LUA_TAKE}{body}"))
}

/// ARGV = channel, entry.
static SEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local base = KEYS[1]
redis.call('RPUSH', base .. 'q:' .. esc(ARGV[1]), ARGV[2])
redis.call('SADD', base .. 'channels', ARGV[1])
return 1
",
    )
});

/// ARGV = channel, now.
static CONSUME: LazyLock<Script> =
    LazyLock::new(|| script("return take(KEYS[1], ARGV[1], tonumber(ARGV[2]))"));

/// ARGV = execution id, channel, machine, state, step, deadline ('' = none), now.
static WAIT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local base = KEYS[1]
local id = ARGV[1]
local wkey = base .. 'w:' .. esc(id)
local held = redis.call('HMGET', wkey, 'step', 'delivered', 'channel')
if held[2] and held[1] == ARGV[5] then return held[2] end
if held[3] then redis.call('ZREM', base .. 'wch:' .. esc(held[3]), id) end
local sig = take(base, ARGV[2], tonumber(ARGV[7]))
redis.call('DEL', wkey)
local seq = redis.call('INCR', base .. 'seq')
redis.call('HSET', wkey, 'channel', ARGV[2], 'machine', ARGV[3], 'state', ARGV[4],
  'step', ARGV[5], 'deadline', ARGV[6], 'registered', ARGV[7], 'seq', seq)
if sig then redis.call('HSET', wkey, 'delivered', sig) end
redis.call('ZADD', base .. 'waiters', seq, id)
redis.call('ZADD', base .. 'wch:' .. esc(ARGV[2]), seq, id)
return sig
",
    )
});

/// ARGV = execution id, step ('' = any).
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local base = KEYS[1]
local id = ARGV[1]
local wkey = base .. 'w:' .. esc(id)
local f = redis.call('HMGET', wkey, 'step', 'channel')
if not f[2] then return 0 end
if ARGV[2] ~= '' and f[1] ~= ARGV[2] then return 0 end
redis.call('DEL', wkey)
redis.call('ZREM', base .. 'waiters', id)
redis.call('ZREM', base .. 'wch:' .. esc(f[2]), id)
return 1
",
    )
});

/// ARGV = channel, now. Returns the execution ids handed the signal.
static DELIVER: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local base = KEYS[1]
local ids = redis.call('ZRANGE', base .. 'wch:' .. esc(ARGV[1]), 0, -1)
local open = {}
for _, id in ipairs(ids) do
  if redis.call('HEXISTS', base .. 'w:' .. esc(id), 'delivered') == 0 then
    table.insert(open, id)
  end
end
if #open == 0 then return {} end
local sig = take(base, ARGV[1], tonumber(ARGV[2]))
if not sig then return {} end
for _, id in ipairs(open) do
  redis.call('HSET', base .. 'w:' .. esc(id), 'delivered', sig)
end
return open
",
    )
});

/// ARGV = execution id, owner, until, now. 1 claimed, 0 not.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local wkey = KEYS[1] .. 'w:' .. esc(ARGV[1])
if redis.call('EXISTS', wkey) == 0 then return 0 end
local c = redis.call('HMGET', wkey, 'claimed_by', 'claim_until')
if c[1] and c[1] ~= ARGV[2] and tonumber(c[2]) > tonumber(ARGV[4]) then return 0 end
redis.call('HSET', wkey, 'claimed_by', ARGV[2], 'claim_until', ARGV[3])
return 1
",
    )
});

/// ARGV = execution id, owner.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local wkey = KEYS[1] .. 'w:' .. esc(ARGV[1])
if redis.call('HGET', wkey, 'claimed_by') == ARGV[2] then
  redis.call('HDEL', wkey, 'claimed_by', 'claim_until')
end
return 1
",
    )
});

/// ARGV = now. Removes expired entries from every channel list; returns how many.
static PURGE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local base = KEYS[1]
local now = tonumber(ARGV[1])
local n = 0
for _, channel in ipairs(redis.call('SMEMBERS', base .. 'channels')) do
  local q = base .. 'q:' .. esc(channel)
  for _, e in ipairs(redis.call('LRANGE', q, 0, -1)) do
    local bar = string.find(e, '|', 1, true)
    local exp = string.sub(e, 1, bar - 1)
    if exp ~= '' and tonumber(exp) <= now then
      n = n + redis.call('LREM', q, 1, e)
    end
  end
  if redis.call('LLEN', q) == 0 then redis.call('SREM', base .. 'channels', channel) end
end
return n
",
    )
});

/// Signals and waiters on a Redis server (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct RedisSignalBackend {
    conn: RedisConnection,
    base: String,
}

fn storage(e: impl std::fmt::Display) -> SignalError {
    SignalError::Storage(e.to_string())
}

fn parse_signal(json: &str) -> Result<Signal, SignalError> {
    serde_json::from_str(json).map_err(|e| storage(format!("a stored signal is invalid: {e}")))
}

/// Splits a list entry into (expiry, signal JSON).
fn split_entry(entry: &str) -> Option<(Option<u64>, &str)> {
    let (exp, json) = entry.split_once('|')?;
    Some((
        if exp.is_empty() {
            None
        } else {
            exp.parse().ok()
        },
        json,
    ))
}

impl RedisSignalBackend {
    /// Signals on `conn`'s server, under its prefix.
    pub fn new(conn: RedisConnection) -> Self {
        let base = conn.key("sig:");
        Self { conn, base }
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        args: &[&str],
    ) -> Result<T, SignalError> {
        let mut inv = script.prepare_invoke();
        inv.key(&self.base);
        for a in args {
            inv.arg(*a);
        }
        let mut conn = self.conn.manager().await.map_err(storage)?;
        inv.invoke_async(&mut conn).await.map_err(storage)
    }

    async fn live_entries(&self, channel: &str) -> Result<Vec<Signal>, SignalError> {
        let mut conn = self.conn.manager().await.map_err(storage)?;
        let entries: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("{}q:{}", self.base, seg(channel)))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(storage)?;
        let now = now_millis();
        entries
            .iter()
            .filter_map(|e| split_entry(e))
            .filter(|(exp, _)| exp.is_none_or(|e| e > now))
            .map(|(_, json)| parse_signal(json))
            .collect()
    }

    fn waiter_from(
        id: String,
        fields: HashMap<String, String>,
    ) -> Result<Option<Waiter>, SignalError> {
        let Some(channel) = fields.get("channel").cloned() else {
            return Ok(None);
        };
        let num = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
        let delivered = fields
            .get("delivered")
            .map(|json| parse_signal(json))
            .transpose()?;
        let claim = fields
            .get("claimed_by")
            .map(|o| (o.clone(), num("claim_until").unwrap_or(0)));
        Ok(Some(Waiter {
            execution_id: id,
            channel,
            machine: fields.get("machine").cloned().unwrap_or_default(),
            state: fields.get("state").cloned().unwrap_or_default(),
            step: num("step").unwrap_or(0),
            deadline_ms: num("deadline"),
            registered_ms: num("registered").unwrap_or(0),
            delivered,
            claim,
        }))
    }
}

#[async_trait]
impl SignalBackend for RedisSignalBackend {
    async fn send(
        &self,
        channel: &str,
        data: Value,
        options: SendOptions,
    ) -> Result<Signal, SignalError> {
        validate_channel(channel)?;
        encode_data(&data)?;
        let signal = Signal {
            id: new_signal_id(),
            channel: channel.to_owned(),
            data,
            created_at: iso_from_millis(now_millis()),
        };
        let json =
            serde_json::to_string(&signal).map_err(|e| SignalError::InvalidData(e.to_string()))?;
        let expires = options
            .ttl
            .map(|t| millis_after(t).to_string())
            .unwrap_or_default();
        let entry = format!("{expires}|{json}");
        let _: i64 = self.invoke(&SEND, &[channel, &entry]).await?;
        Ok(signal)
    }

    async fn consume(&self, channel: &str) -> Result<Option<Signal>, SignalError> {
        let now = now_millis().to_string();
        let json: Option<String> = self.invoke(&CONSUME, &[channel, &now]).await?;
        json.as_deref().map(parse_signal).transpose()
    }

    async fn peek(&self, channel: &str) -> Result<Vec<Signal>, SignalError> {
        self.live_entries(channel).await
    }

    async fn channels(&self) -> Result<Vec<String>, SignalError> {
        let mut conn = self.conn.manager().await.map_err(storage)?;
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}channels", self.base))
            .query_async(&mut conn)
            .await
            .map_err(storage)?;
        names.sort();
        let mut live = Vec::with_capacity(names.len());
        for name in names {
            if !self.live_entries(&name).await?.is_empty() {
                live.push(name);
            }
        }
        Ok(live)
    }

    async fn wait(&self, request: &WaitRequest<'_>) -> Result<Option<Signal>, SignalError> {
        validate_channel(request.channel)?;
        let step = request.step.to_string();
        let deadline = request
            .deadline_ms
            .map(|d| d.to_string())
            .unwrap_or_default();
        let now = now_millis().to_string();
        let json: Option<String> = self
            .invoke(
                &WAIT,
                &[
                    request.execution_id,
                    request.channel,
                    request.machine,
                    request.state,
                    &step,
                    &deadline,
                    &now,
                ],
            )
            .await?;
        json.as_deref().map(parse_signal).transpose()
    }

    async fn ack(&self, execution_id: &str, step: u64) -> Result<(), SignalError> {
        let _: i64 = self
            .invoke(&REMOVE, &[execution_id, &step.to_string()])
            .await?;
        Ok(())
    }

    async fn waiters(&self, channel: Option<&str>) -> Result<Vec<Waiter>, SignalError> {
        let set = match channel {
            Some(c) => format!("{}wch:{}", self.base, seg(c)),
            None => format!("{}waiters", self.base),
        };
        let mut conn = self.conn.manager().await.map_err(storage)?;
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&set)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(storage)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL")
                .arg(format!("{}w:{}", self.base, seg(id)));
        }
        let all: Vec<HashMap<String, String>> =
            pipe.query_async(&mut conn).await.map_err(storage)?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, fields) in ids.into_iter().zip(all) {
            if let Some(w) = Self::waiter_from(id, fields)? {
                out.push(w);
            }
        }
        Ok(out)
    }

    async fn deliver(&self, channel: &str) -> Result<Vec<String>, SignalError> {
        let now = now_millis().to_string();
        self.invoke(&DELIVER, &[channel, &now]).await
    }

    async fn claim(
        &self,
        execution_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, SignalError> {
        let now = now_millis().to_string();
        let until = millis_after(lease).to_string();
        let n: i64 = self
            .invoke(&CLAIM, &[execution_id, owner, &until, &now])
            .await?;
        Ok(n == 1)
    }

    async fn release(&self, execution_id: &str, owner: &str) -> Result<(), SignalError> {
        let _: i64 = self.invoke(&RELEASE, &[execution_id, owner]).await?;
        Ok(())
    }

    async fn forget(&self, execution_id: &str) -> Result<(), SignalError> {
        let _: i64 = self.invoke(&REMOVE, &[execution_id, ""]).await?;
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64, SignalError> {
        let now = now_millis().to_string();
        let n: i64 = self.invoke(&PURGE, &[&now]).await?;
        Ok(n.max(0) as u64)
    }
}
