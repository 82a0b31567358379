--[[
  txn.lua: an atomic compare -> then / else transaction.
  KEYS: see lib.lua
  ARGV[1]  base "rb:{ns}:"
  ARGV[2]  request nonce, echoed first in the reply (see lib.lua)
  ARGV[3]  id of the session the transaction's puts attach keys to, or ""
  ARGV[4]  number of compares C, then 4 arguments per compare:
             key, target (exists | version | createRevision | modRevision | value),
             op (= | != | < | >), operand (exists: "1" or "0")
  then     number of `then` ops T, then 4 arguments per op:
             kind (put | delete | deletePrefix | get | range), key or prefix,
             value (put; else ""), attach ("1" when the put attaches the key to the session)
  then     number of `else` ops E, 4 arguments per op likewise
  Returns {"OK", succeeded (1|0), revision, results} where results has one
          entry per op of the branch that ran:
            {"put", key} | {"delete", key, n} | {"deletePrefix", prefix, n}
            | {"get", key, found (1|0), fields} | {"range", prefix, fields}
          with fields as in get.lua / range.lua
          | {"EXPIRED", sessionId}   the session has ended: nothing written
          | {"SCHEMA", found} | {"CORRUPT", key, detail} | {"BADARG", detail}

  Every key the transaction compares, reads or writes is loaded and checked
  before the first write, so a CORRUPT abort leaves the data untouched.
  The revision is bumped (once) only when something changed.
]]

local function parse_ops(at)
  local n = tonumber(ARGV[at])
  if n == nil then abort('BADARG', 'op count') end
  local ops = {}
  for i = 0, n - 1 do
    local j = at + 1 + i * 4
    local attach = ARGV[j + 3] == '1'
    if attach and ARGV[3] == '' then abort('BADARG', 'a put attaches a key but no session was given') end
    ops[#ops + 1] = { kind = ARGV[j], key = ARGV[j + 1], value = ARGV[j + 2], attach = attach }
  end
  return ops, at + 1 + n * 4
end

local function compare_num(actual, op, want)
  if op == '=' then return actual == want end
  if op == '!=' then return actual ~= want end
  if op == '<' then return actual < want end
  if op == '>' then return actual > want end
  abort('BADARG', 'unknown compare op ' .. tostring(op))
end

return run(function()
  local sid = ARGV[3]
  local ncmp = tonumber(ARGV[4])
  if ncmp == nil then abort('BADARG', 'compare count') end
  local compares = {}
  for i = 0, ncmp - 1 do
    local j = 5 + i * 4
    compares[#compares + 1] = { key = ARGV[j], target = ARGV[j + 1], op = ARGV[j + 2], operand = ARGV[j + 3] }
  end
  local then_ops, at = parse_ops(5 + ncmp * 4)
  local else_ops = parse_ops(at)

  prepare()
  reap()
  if sid ~= '' and not session_live(sid) then abort('EXPIRED', sid) end

  -- Loaded keys: name -> {kv = visible record or nil, state = ok | absent | hidden}.
  local cache = {}
  local function get(key)
    local e = cache[key]
    if e == nil then
      local kv, state = load(key, true)
      e = { kv = kv, state = state }
      cache[key] = e
    end
    return e.kv
  end
  local function keys_under(prefix)
    local lo, hi = lex_bounds(prefix)
    local names = redis.call('ZRANGEBYLEX', K_IDX, lo, hi)
    for _, key in ipairs(names) do
      if not valid_utf8(key) then abort('CORRUPT', key, 'has a name that is not UTF-8') end
      get(key)
      if cache[key].state == 'absent' then abort('CORRUPT', key, 'is listed in the index but has no data') end
    end
    return names
  end

  local succeeded = true
  for _, c in ipairs(compares) do
    local kv = get(c.key)
    local ok
    if c.target == 'exists' then
      ok = (kv ~= nil) == (c.operand == '1')
    elseif c.target == 'value' then
      if kv == nil then ok = false
      elseif c.op == '=' then ok = kv.value == c.operand
      elseif c.op == '!=' then ok = kv.value ~= c.operand
      else abort('BADARG', 'unknown value compare op') end
    else
      local want = tonumber(c.operand)
      if want == nil then abort('BADARG', 'compare operand is not a number') end
      local actual = 0
      if kv ~= nil then
        if c.target == 'version' then actual = kv.version
        elseif c.target == 'createRevision' then actual = kv.crev
        elseif c.target == 'modRevision' then actual = kv.mrev
        else abort('BADARG', 'unknown compare target ' .. tostring(c.target)) end
      end
      ok = compare_num(actual, c.op, want)
    end
    if not ok then succeeded = false end
  end

  local ops = else_ops
  if succeeded then ops = then_ops end

  -- Phase 1: reads, and checks of everything the writes will touch.
  local results = {}
  for i, op in ipairs(ops) do
    if op.kind == 'get' then
      local kv = get(op.key)
      if kv == nil then results[i] = { 'get', op.key, 0, {} }
      else results[i] = { 'get', op.key, 1, kv_fields(op.key, kv) } end
    elseif op.kind == 'range' then
      local fields = {}
      for _, key in ipairs(keys_under(op.key)) do
        local kv = get(key)
        if kv ~= nil then
          for _, f in ipairs(kv_fields(key, kv)) do fields[#fields + 1] = f end
        end
      end
      results[i] = { 'range', op.key, fields }
    elseif op.kind == 'put' or op.kind == 'delete' then
      get(op.key)
    elseif op.kind == 'deletePrefix' then
      keys_under(op.key)
    else
      abort('BADARG', 'unknown op ' .. tostring(op.kind))
    end
  end

  -- Phase 2: writes, in order, all at one revision.
  local rev = next_rev()
  local changed = {}
  local function remove(key, kv)
    redis.call('DEL', hkey(key))
    redis.call('ZREM', K_IDX, key)
    if kv.sid then redis.call('SREM', skey(kv.sid), key) end
    cache[key] = { kv = nil, state = 'absent' }
    changed[#changed + 1] = key
  end
  for i, op in ipairs(ops) do
    if op.kind == 'put' then
      local prev = get(op.key)
      local name = hkey(op.key)
      local version, crev = 1, rev
      if prev ~= nil then
        version, crev = prev.version + 1, prev.crev
      else
        -- Clear what a hidden record (of an ended, not yet reaped session) left.
        redis.call('DEL', name)
      end
      redis.call('HSET', name, 'value', op.value, 'version', fmt(version), 'crev', fmt(crev), 'mrev', fmt(rev))
      local new_sid = false
      if op.attach then
        new_sid = sid
        redis.call('HSET', name, 'sid', sid)
        redis.call('SADD', skey(sid), op.key)
      else
        redis.call('HDEL', name, 'sid')
      end
      if prev ~= nil and prev.sid and prev.sid ~= new_sid then redis.call('SREM', skey(prev.sid), op.key) end
      redis.call('ZADD', K_IDX, 0, op.key)
      cache[op.key] = { kv = { value = op.value, version = version, crev = crev, mrev = rev, sid = new_sid }, state = 'ok' }
      changed[#changed + 1] = op.key
      results[i] = { 'put', op.key }
    elseif op.kind == 'delete' then
      local prev = get(op.key)
      if prev ~= nil then remove(op.key, prev) end
      results[i] = { 'delete', op.key, prev ~= nil and 1 or 0 }
    elseif op.kind == 'deletePrefix' then
      local lo, hi = lex_bounds(op.key)
      local n = 0
      for _, key in ipairs(redis.call('ZRANGEBYLEX', K_IDX, lo, hi)) do
        local prev = get(key)
        if prev ~= nil then
          remove(key, prev)
          n = n + 1
        end
      end
      results[i] = { 'deletePrefix', op.key, n }
    end
  end

  if #changed > 0 then
    commit_rev(rev)
    publish(rev, changed)
  else
    rev = current_rev()
  end
  return { 'OK', succeeded and 1 or 0, rev, results }
end)
