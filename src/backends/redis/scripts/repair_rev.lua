--[[
  repair_rev.lua: replace a revision counter that is not a positive integer
  (junk text, or another Redis type), on an operator's request
  (`rebalancer store repair-revision`). No other script ever overwrites it.
  KEYS: see lib.lua
  ARGV[1] base "rb:{ns}:"
  ARGV[2] request nonce, echoed first in the reply (see lib.lua)
  Returns {"OK", "kept", revision}       the counter is readable (or absent): untouched
        | {"OK", "repaired", revision, previous}  previous: its text (first 40 bytes) or "<type>"
        | {"SCHEMA", found} | {"CORRUPT", name, detail}
  The new value is above every revision the namespace still shows (each
  key's create and mod revision) and, like next_rev, never below the server
  time in microseconds: no revision, and so no fencing token, handed out
  before is handed out again. Reads every key's record once (O(keys)).
]]
return run(function()
  check_schema()
  if rev_readable() then
    local rev = redis.call('GET', K_REV)
    return { 'OK', 'kept', rev or '' }
  end
  local previous = redis.pcall('GET', K_REV)
  if is_err(previous) then
    previous = '<' .. redis.call('TYPE', K_REV)['ok'] .. '>'
  else
    previous = string.sub(previous, 1, 40)
  end
  local highest = 0
  for _, key in ipairs(redis.call('ZRANGE', K_IDX, 0, -1)) do
    local r = redis.pcall('HMGET', hkey(key), 'crev', 'mrev')
    if not is_err(r) then
      for _, f in ipairs({ r[1], r[2] }) do
        local n = parse_count(f)
        if n ~= nil and n > highest then highest = n end
      end
    end
  end
  local n = highest + 1
  if NOW_US > n then n = NOW_US end
  redis.call('DEL', K_REV)
  redis.call('SET', K_REV, fmt(n))
  return { 'OK', 'repaired', fmt(n), previous }
end)
