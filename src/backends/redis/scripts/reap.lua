--[[
  reap.lua: the periodic maintenance call of every store client: reap
  sessions whose expiry has passed (so their keys vanish and watchers hear
  even when no client of that session is alive) and report the revision
  (watchers compare it, in case a notification was lost).
  KEYS: see lib.lua
  ARGV[1] base "rb:{ns}:"
  ARGV[2] request nonce, echoed first in the reply (see lib.lua)
  Returns {"OK", revision} | {"SCHEMA", found} | {"CORRUPT", name, detail}
]]
return run(function()
  prepare()
  reap()
  return { 'OK', current_rev() }
end)
