--[[
  range.lua: read every key under a prefix, atomically (one snapshot).
  KEYS: see lib.lua
  ARGV[1] base "rb:{ns}:"
  ARGV[2] request nonce, echoed first in the reply (see lib.lua)
  ARGV[3] prefix ("" for the whole namespace)
  Returns {"OK", revision, fields} where fields is the flat list
          key, value, version, crev, mrev, sessionId or "" for each key, in
          byte order (the client sorts them in JavaScript string order)
          | {"SCHEMA", found} | {"CORRUPT", key, detail}
]]
return run(function()
  local prefix = ARGV[3]
  prepare()
  reap()
  local lo, hi = lex_bounds(prefix)
  local names = redis.call('ZRANGEBYLEX', K_IDX, lo, hi)
  local out = {}
  for _, key in ipairs(names) do
    local kv, state = load(key, false)
    if state == 'absent' then abort('CORRUPT', key, 'is listed in the index but has no data') end
    if kv ~= nil then
      for _, f in ipairs(kv_fields(key, kv)) do out[#out + 1] = f end
    end
  end
  return { 'OK', current_rev(), out }
end)
