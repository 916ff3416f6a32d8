"""The Lua scripts of the Redis backend (sent once with SCRIPT LOAD, then run by EVALSHA).

Every key a script touches belongs to one bucket of one store, so it is in one hash
slot (``{prefix/bucket}``) and the script runs atomically on one node, cluster or not.

A bucket holds, beside the entries ``{P/b}:s:<key>``:

- ``{P/b}:k``: sorted set of the keys (all scores 0: ordered by the bytes of the key);
- ``{P/b}:r``: sorted set of ``<recency code><key>`` (all scores 0; the code sorts newest
  first and sessions without an integer ``updatedAt`` last);
- ``{P/b}:v``: hash ``key -> "<version token> <recency code>"``: the token of the write
  that put the entry there (compare-and-swap by token instead of by the entry's bytes),
  and the code of its member in ``{P/b}:r``;
- ``{P/b}:x:<batch token>``: the receipt of one batch: the outcome of each of its writes
  (``L`` landed, ``C`` conflict), set in the same script as the writes. A batch sent again
  (redis-py retries a command whose connection dropped; the backend resolves a batch whose
  reply never came) finds its receipt and changes nothing: scripts are idempotent.
"""

from __future__ import annotations

__all__ = ["READ", "RESOLVE", "WRITE"]

#: KEYS: 1 the entry, 2 the bucket's version hash. ARGV: 1 the key, 2 the version token of the
#: bytes the reader holds ('' for none).
#: Returns "<version token> <bytes>" (one bulk reply: as cheap to parse as a GET), the token
#: alone when it is the reader's (the entry is unchanged: its bytes are not sent again), or false.
READ = """
local version = redis.call('HGET', KEYS[2], ARGV[1]) or ''
local sp = string.find(version, ' ', 1, true)
if sp then version = string.sub(version, 1, sp - 1) end
if version ~= '' and version == ARGV[2] and redis.call('EXISTS', KEYS[1]) == 1 then
  return version
end
local data = redis.call('GET', KEYS[1])
if not data then return false end
return version .. ' ' .. data
"""

#: KEYS: 1 receipt, 2 keys zset, 3 recency zset, 4 version hash, then d receipts to
#: delete (batches of this writer already acknowledged), then the n entries.
#: ARGV: 1 receipt ttl (s), 2 d, 3 n, then 7 per write:
#:   action ('S' set, 'D' delete), guard ('B' blind, 'A' absent, 'T' version token,
#:   'V' value bytes), key, new version token, expected (token or bytes), data, recency code.
#: Returns {statuses ('L' landed, 'C' conflict, 'E' error), then for each C the current
#: bytes and version token, for each E the error and '', in order} or {'aborted'} when the
#: batch was declared lost before it ran.
WRITE = """
local receipt = redis.call('GET', KEYS[1])
local d = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local first = 4 + d
local function version_of(field)
  local v = redis.call('HGET', KEYS[4], field)
  if not v then return false, false end
  local sp = string.find(v, ' ', 1, true)
  return string.sub(v, 1, sp - 1), string.sub(v, sp + 1)
end
-- A command on an entry key fails alone (say, someone made it a hash): that write fails,
-- the others of the batch go on; nothing of a failed write was changed.
local function try(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply['err'] then return nil, reply['err'] end
  return reply, nil
end
if receipt then
  if receipt == 'aborted' then return {'aborted'} end
  local out = {receipt}
  for i = 1, n do
    local status = string.sub(receipt, i, i)
    if status == 'C' then
      local token = version_of(ARGV[4 + (i - 1) * 7 + 2])
      local current, err = try('GET', KEYS[first + i])
      out[#out + 1] = current or false
      out[#out + 1] = token or ''
    elseif status == 'E' then
      out[#out + 1] = 'failed when this batch first ran'
      out[#out + 1] = ''
    end
  end
  return out
end
local types = {'zset', 'zset', 'hash'}
for j = 2, 4 do
  local t = redis.call('TYPE', KEYS[j])['ok']
  if t ~= 'none' and t ~= types[j - 1] then
    return redis.error_reply('WRONGTYPE aiosessions index ' .. KEYS[j] .. ' is a ' .. t)
  end
end
for j = 5, 4 + d do redis.call('DEL', KEYS[j]) end
local statuses = {}
local out = {''}
for i = 1, n do
  local b = 4 + (i - 1) * 7
  local action, guard, field = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local token, expected, data, code = ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
  local entry = KEYS[first + i]
  local current, current_code = version_of(field)
  local ok, err, _
  if guard == 'B' then
    ok = true
  elseif guard == 'A' then
    ok = redis.call('EXISTS', entry) == 0
  elseif guard == 'T' then
    ok = current == expected and redis.call('EXISTS', entry) == 1
  else
    local stored
    stored, err = try('GET', entry)
    ok = err == nil and stored == expected
  end
  if ok then
    if action == 'S' then
      _, err = try('SET', entry, data)
    else
      _, err = try('DEL', entry)
    end
  end
  if err then
    statuses[i] = 'E'
    out[#out + 1] = err
    out[#out + 1] = ''
  elseif ok then
    if current_code then redis.call('ZREM', KEYS[3], current_code .. field) end
    if action == 'S' then
      redis.call('ZADD', KEYS[2], 0, field)
      redis.call('ZADD', KEYS[3], 0, code .. field)
      redis.call('HSET', KEYS[4], field, token .. ' ' .. code)
    else
      redis.call('ZREM', KEYS[2], field)
      redis.call('HDEL', KEYS[4], field)
    end
    statuses[i] = 'L'
  else
    statuses[i] = 'C'
    local now = try('GET', entry)
    out[#out + 1] = now or false
    out[#out + 1] = current or ''
  end
end
out[1] = table.concat(statuses)
redis.call('SET', KEYS[1], out[1], 'EX', ARGV[1])
return out
"""

#: KEYS: 1 the receipt of a batch whose reply never came. ARGV: 1 ttl (s).
#: Returns the batch's statuses, or 'aborted': it had not run, and now never will.
RESOLVE = """
local receipt = redis.call('GET', KEYS[1])
if receipt then return receipt end
redis.call('SET', KEYS[1], 'aborted', 'EX', ARGV[1])
return 'aborted'
"""
