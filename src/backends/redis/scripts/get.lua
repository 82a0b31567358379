--[[
  get.lua: read one key.
  KEYS: see lib.lua
  ARGV[1] base "rb:{ns}:"
  ARGV[2] request nonce, echoed first in the reply (see lib.lua)
  ARGV[3] key
  Returns {"OK", revision, found, fields} where found is 1 or 0 and fields is
          {key, value, version, crev, mrev, sessionId or ""} (empty when not found)
          | {"SCHEMA", found} | {"CORRUPT", key, detail}
  The value's UTF-8 is checked by the client, which reports CorruptDataError.
]]
return run(function()
  local key = ARGV[3]
  prepare()
  reap()
  local kv = load(key, false)
  if kv == nil then return { 'OK', current_rev(), 0, {} } end
  return { 'OK', current_rev(), 1, kv_fields(key, kv) }
end)
