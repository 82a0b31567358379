--[[
  keep_alive.lua: extend a live session to ttlMs after now (server clock).
  KEYS: see lib.lua
  ARGV[1] base "rb:{ns}:"
  ARGV[2] request nonce, echoed first in the reply (see lib.lua)
  ARGV[3] session id
  ARGV[4] ttlMs
  Returns {"OK", 1, nowMs} when extended, {"OK", 0, nowMs} when the session no longer
  exists (expired by the server clock, revoked, or lost with the server's data);
  nowMs is the server's clock (TIME) as the script ran: the client checks its
  clock's rate with it
          | {"SCHEMA", found} | {"CORRUPT", name, detail} | {"BADARG", detail}
  Works with a junk revision counter (see below).
]]
return run(function()
  local sid = ARGV[3]
  local ttl = parse_count(ARGV[4])
  if ttl == nil then abort('BADARG', 'ttlMs must be a positive integer') end
  -- A junk revision counter must not end every session of the namespace: the extension needs no revision, so the
  -- members keep their locks (every other call reports the counter until it is repaired). Only the reaping, which
  -- writes revisions, waits for the repair; keys of ended sessions stay hidden meanwhile (see load()).
  if rev_readable() then
    prepare()
    reap()
  else
    check_schema()
  end
  local score = redis.call('ZSCORE', K_SESS, sid)
  if score == false or tonumber(score) <= NOW_MS then return { 'OK', 0, fmt(NOW_MS) } end
  local expiry = NOW_MS + ttl
  -- Never shorten: a keep-alive that was delayed in transit must not undo a newer one.
  if tonumber(score) > expiry then expiry = tonumber(score) end
  redis.call('ZADD', K_SESS, fmt(expiry), sid)
  return { 'OK', 1, fmt(NOW_MS) }
end)
