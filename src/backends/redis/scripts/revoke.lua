--[[
  revoke.lua: end a session now and delete its keys.
  KEYS: see lib.lua
  ARGV[1] base "rb:{ns}:"
  ARGV[2] request nonce, echoed first in the reply (see lib.lua)
  ARGV[3] session id
  Returns {"OK", revision}  (the namespace revision after the call)
          | {"SCHEMA", found} | {"CORRUPT", name, detail}
  The session's expiry is set to 0, which hides its keys at once and puts it
  first in line for reaping; reaping deletes its keys under the usual bound
  (a session with more keys than one call may delete is finished by later calls).
]]
return run(function()
  local sid = ARGV[3]
  prepare()
  if redis.call('ZSCORE', K_SESS, sid) ~= false then
    redis.call('ZADD', K_SESS, 0, sid)
  end
  reap()
  return { 'OK', current_rev() }
end)
