--[[
  open_session.lua: create a session that expires ttlMs after now (server clock).
  KEYS: see lib.lua (schema, rev, idx, sess, sseq)
  ARGV[1] base "rb:{ns}:"
  ARGV[2] request nonce, echoed first in the reply (see lib.lua)
  ARGV[3] ttlMs (positive integer, validated by the client)
  Returns {"OK", sessionId, ttlMs}
          | {"SCHEMA", found} | {"CORRUPT", name, detail} | {"BADARG", detail}
  Session ids come from KEYS[5] like revisions come from KEYS[2]: one more
  than the last, never below the server time in microseconds, so an id is
  never handed out twice, even after Redis lost its data.
]]
return run(function()
  local ttl = parse_count(ARGV[3])
  if ttl == nil then abort('BADARG', 'ttlMs must be a positive integer') end
  prepare()
  reap()
  local last = safe_get(K_SSEQ)
  local n = 0
  if last ~= false then
    n = parse_count(last)
    if n == nil then abort('CORRUPT', K_SSEQ, 'session counter is not a positive integer') end
  end
  local id = n + 1
  if NOW_US > id then id = NOW_US end
  redis.call('SET', K_SSEQ, fmt(id))
  redis.call('ZADD', K_SESS, fmt(NOW_MS + ttl), fmt(id))
  return { 'OK', fmt(id), ttl }
end)
