--[[
  lib.lua: the prelude every Rebalancer script starts with (the client
  prepends it to each script's body before loading it).

  KEYS (the same five in every script, all under the namespace's hash tag):
    KEYS[1]  rb:{ns}:schema  layout version of the namespace ("1")
    KEYS[2]  rb:{ns}:rev     revision counter (decimal integer)
    KEYS[3]  rb:{ns}:idx     sorted set of key names, all score 0 (ZRANGEBYLEX prefix reads)
    KEYS[4]  rb:{ns}:sess    sorted set: session id -> expiry in server milliseconds
    KEYS[5]  rb:{ns}:sseq    last session id handed out (decimal integer)
  ARGV[1]    "rb:{ns}:", the base the dynamic names are built from:
               <base>k:<key>   hash of one key: value, version, crev, mrev[, sid]
               <base>s:<id>    set of the key names attached to session <id>
               <base>events    pub/sub channel (not a key)
  ARGV[2]    a nonce chosen by the client for this call; every reply starts
             with it, so a reply that reaches the wrong request (a connection
             that lost bytes) is recognised instead of believed
  ARGV[3..]  the script's own arguments (see its header)

  The per-key hashes and per-session sets cannot be declared in KEYS (a range
  or a reaped session touches names the client does not know). Every one of
  them contains the same "{ns}" hash tag as KEYS[1..5], so on Redis Cluster
  they live in the same slot as the declared keys, and a single server has no
  such rule at all.

  Replies: every script returns {nonce, status, ...}: the nonce of ARGV[2],
  then a status string (script headers show the part from the status on).
  "OK" is followed by the script's own results; otherwise
  nothing was changed by the script's own operation (reaping of expired
  sessions may have happened, as the server's expiry would anyway):
    {"SCHEMA", found}          KEYS[1] holds a layout version this code does not know
    {"CORRUPT", name, detail}  a key or internal record is not what Rebalancer writes (a
                               junk revision counter is reported by every script but
                               keep_alive, which neither reads nor needs it)
    {"EXPIRED", sessionId}     the transaction names a session that has ended
    {"BADARG", detail}         malformed arguments (a client bug)

  Time: only the server's clock (TIME) is used. Scripts write after reading
  TIME, which Redis allows because scripts replicate their effects (the
  default since Redis 5; redis.replicate_commands() enables it on older ones).
]]

-- Effects replication is the default (and the only mode) from Redis 7; the call is deprecated there.
if redis.replicate_commands ~= nil then redis.replicate_commands() end

local SCHEMA_VERSION = '1'
local K_SCHEMA, K_REV, K_IDX, K_SESS, K_SSEQ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local BASE = ARGV[1]
local NONCE = ARGV[2]
local CHANNEL = BASE .. 'events'
-- Bound the work one call spends on expired sessions so Redis is never blocked
-- long; what is left is reaped by the next call (keys of ended sessions are
-- hidden from reads meanwhile, see load()).
local REAP_MAX_SESSIONS = 16
local REAP_MAX_KEYS = 1000
-- Change notifications name the changed keys when they are few, else only the revision.
local PUBLISH_MAX_KEYS = 32
local PUBLISH_MAX_BYTES = 8192
local MAX_SAFE = 9007199254740991

local TIME = redis.call('TIME')
local NOW_MS = tonumber(TIME[1]) * 1000 + math.floor(tonumber(TIME[2]) / 1000)
local NOW_US = tonumber(TIME[1]) * 1000000 + tonumber(TIME[2])

-- Integers as exact decimal text (tostring would print 1.7e+15).
local function fmt(n)
  return string.format('%.0f', n)
end

local function abort(code, a, b)
  error({ rb = code, a = a, b = b })
end

local function is_err(r)
  return type(r) == 'table' and r.err ~= nil
end

local function parse_count(s)
  if type(s) ~= 'string' or not string.match(s, '^[1-9]%d*$') or #s > 16 then return nil end
  local n = tonumber(s)
  if n > MAX_SAFE then return nil end
  return n
end

local function safe_get(name)
  local v = redis.pcall('GET', name)
  if is_err(v) then abort('CORRUPT', name, 'is not a string') end
  return v
end

local function check_schema()
  local schema = safe_get(K_SCHEMA)
  if schema ~= false and schema ~= SCHEMA_VERSION then
    if string.match(schema, '^%d+$') and #schema < 10 then abort('SCHEMA', schema) end
    abort('CORRUPT', K_SCHEMA, 'layout version is not a number')
  end
  return schema
end

-- Whether the revision counter can be used: absent (seeded by prepare) or a positive integer. Anything else (junk
-- text, another Redis type) is never overwritten by a script: repair_rev.lua does that when an operator asks.
local function rev_readable()
  local rev = redis.pcall('GET', K_REV)
  if is_err(rev) then return false end
  return rev == false or parse_count(rev) ~= nil
end

-- Schema check, then seeding. Nothing is written before the checks pass.
local function prepare()
  local schema = check_schema()
  local rev = safe_get(K_REV)
  if rev ~= false and parse_count(rev) == nil then abort('CORRUPT', K_REV, 'revision counter is not a positive integer') end
  if schema == false then redis.call('SET', K_SCHEMA, SCHEMA_VERSION) end
  -- A missing counter is a new namespace or lost data: start from the server
  -- time in microseconds, which is above every revision handed out before
  -- (see next_rev), so fencing tokens never repeat.
  if rev == false then redis.call('SET', K_REV, fmt(NOW_US)) end
end

local function current_rev()
  return tonumber(redis.call('GET', K_REV))
end

-- The next revision: one more than the last, but never below the server time
-- in microseconds. So revisions stay above every one handed out before even
-- when Redis lost the counter or restored an older copy of it (crash with
-- appendfsync everysec), as long as the server clock does not step back and
-- fewer than a million revisions are handed out per second.
local function next_rev()
  local n = current_rev() + 1
  if NOW_US > n then n = NOW_US end
  return n
end

local function commit_rev(n)
  redis.call('SET', K_REV, fmt(n))
end

local function publish(rev, keys)
  local msg = fmt(rev)
  if keys ~= nil and #keys <= PUBLISH_MAX_KEYS then
    local bytes = 0
    for _, k in ipairs(keys) do bytes = bytes + #k + 1 end
    if bytes <= PUBLISH_MAX_BYTES then msg = msg .. '\0' .. table.concat(keys, '\0') end
  end
  redis.call('PUBLISH', CHANNEL, msg)
end

local function hkey(key)
  return BASE .. 'k:' .. key
end

local function skey(sid)
  return BASE .. 's:' .. sid
end

local live_cache = {}

-- A session is live while its expiry (server ms) is in the future.
local function session_live(sid)
  local c = live_cache[sid]
  if c == nil then
    local s = redis.call('ZSCORE', K_SESS, sid)
    c = s ~= false and tonumber(s) > NOW_MS
    live_cache[sid] = c
  end
  return c
end

-- Each well-formed multi-byte sequence, by lead byte (RFC 3629, no surrogates, no overlongs).
local UTF8_SEQUENCES = {
  '\240[\144-\191][\128-\191][\128-\191]',
  '[\241-\243][\128-\191][\128-\191][\128-\191]',
  '\244[\128-\143][\128-\191][\128-\191]',
  '\224[\160-\191][\128-\191]',
  '[\225-\236][\128-\191][\128-\191]',
  '\237[\128-\159][\128-\191]',
  '[\238\239][\128-\191][\128-\191]',
  '[\194-\223][\128-\191]',
}

-- Strict UTF-8 check at C speed: replace every well-formed sequence by an
-- ASCII byte; any byte >= 0x80 left over is ill-formed. (Replacing, not
-- deleting, so that no pass can join the bytes around a sequence into a new
-- one; a match always starts at a lead byte, which is never a continuation.)
local function valid_utf8(s)
  if not string.find(s, '[\128-\255]') then return true end
  for _, p in ipairs(UTF8_SEQUENCES) do s = string.gsub(s, p, '.') end
  return not string.find(s, '[\128-\255]')
end

--[[
  Load one key. Returns kv, state where state is
    'ok'      kv = {value, version, crev, mrev, sid (or false)}
    'absent'  no such hash
    'hidden'  the hash belongs to a session that has ended but is not reaped yet:
              it is treated exactly like a missing key
  Aborts CORRUPT when the record is malformed, or (strict) when its value is
  not UTF-8, so a transaction never acts on, or overwrites, foreign data.
]]
local function load(key, strict)
  local name = hkey(key)
  local r = redis.pcall('HMGET', name, 'value', 'version', 'crev', 'mrev', 'sid')
  if is_err(r) then abort('CORRUPT', key, 'is not a hash') end
  local value, version, crev, mrev, sid = r[1], r[2], r[3], r[4], r[5]
  if not value and not version and not crev and not mrev and not sid then
    if redis.call('EXISTS', name) == 1 then abort('CORRUPT', key, 'has none of the fields value, version, crev, mrev') end
    return nil, 'absent'
  end
  if not value then abort('CORRUPT', key, 'has no value field') end
  local v, c, m = parse_count(version), parse_count(crev), parse_count(mrev)
  if v == nil then abort('CORRUPT', key, 'has a version that is not a positive integer') end
  if c == nil or m == nil then abort('CORRUPT', key, 'has a create or mod revision that is not a positive integer') end
  if c > m then abort('CORRUPT', key, 'was created after its last modification') end
  if sid == '' then abort('CORRUPT', key, 'has an empty session id') end
  if strict and not valid_utf8(value) then abort('CORRUPT', key, 'has a value that is not UTF-8') end
  if sid and not session_live(sid) then return nil, 'hidden' end
  return { value = value, version = v, crev = c, mrev = m, sid = sid }, 'ok'
end

-- Delete up to `budget` keys still attached to session `sid`; returns the
-- deleted names and how much of the budget was spent.
local function drop_session_keys(sid, budget)
  local members = redis.call('SPOP', skey(sid), budget)
  local deleted = {}
  for _, key in ipairs(members) do
    local name = hkey(key)
    -- Only if the key is still attached to this session: a later put may have
    -- re-attached it elsewhere or detached it.
    local owner = redis.pcall('HGET', name, 'sid')
    if owner == sid then
      redis.call('DEL', name)
      redis.call('ZREM', K_IDX, key)
      deleted[#deleted + 1] = key
    end
  end
  return deleted, #members
end

-- Reap sessions whose expiry has passed on the server clock: delete their
-- keys (one revision and one notification per session), then the session.
local function reap()
  local expired = redis.call('ZRANGEBYSCORE', K_SESS, '-inf', NOW_MS, 'LIMIT', 0, REAP_MAX_SESSIONS)
  local budget = REAP_MAX_KEYS
  for _, sid in ipairs(expired) do
    if budget <= 0 then break end
    live_cache[sid] = false
    local deleted, spent = drop_session_keys(sid, budget)
    budget = budget - spent
    if #deleted > 0 then
      local rev = next_rev()
      commit_rev(rev)
      publish(rev, deleted)
    end
    if redis.call('EXISTS', skey(sid)) == 0 then redis.call('ZREM', K_SESS, sid) end
  end
end

-- Run a script body: aborts become status replies, anything else an error reply.
local function run(body)
  local ok, res = pcall(body)
  if ok then
    table.insert(res, 1, NONCE)
    return res
  end
  if type(res) == 'table' and res.rb ~= nil then return { NONCE, res.rb, res.a or '', res.b or '' } end
  if is_err(res) then return res end
  return redis.error_reply(tostring(res))
end

-- ZRANGEBYLEX bounds of the names starting with prefix.
local function lex_bounds(prefix)
  if prefix == '' then return '-', '+' end
  -- 0xFF never occurs in UTF-8, so every name that starts with prefix sorts below prefix..0xFF.
  return '[' .. prefix, '(' .. prefix .. '\255'
end

local function kv_fields(key, kv)
  return { key, kv.value, fmt(kv.version), fmt(kv.crev), fmt(kv.mrev), kv.sid or '' }
end
