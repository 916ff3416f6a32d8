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
  reply never came) finds its receipt and changes nothing: scripts are idempotent;
- ``{P/b}:b:<digest>:<key>``: a large member of the entry of ``<key>`` stored apart (format
  version 2), named by the SHA-256 of its bytes; the entry is then ``@`` and its split JSON
  (``_parts``), and ``{P/b}:p`` (hash ``key -> "<digest> <digest> ..."``) lists the blobs it
  names. The script that replaces or deletes an entry deletes the blobs it no longer names, so
  no blob outlives its entry and none is ever missing for the entry that names it.

Blob keys are made in the scripts from the entry's bucket tag (``KEYS[2]`` minus ``:k``), not
passed in ``KEYS``: which blobs a write drops is only known in the server. They share the
bucket's hash tag, so they are in the slot of the keys passed, as Redis Cluster requires.
"""

from __future__ import annotations

__all__ = ["READ", "RESOLVE", "UPGRADE", "WRITE"]

#: KEYS: 1 the entry, 2 the bucket's version hash, 3 its parts hash. ARGV: 1 the key, 2 the
#: version token of the bytes the reader holds ('' for none), 3 the digests of the blobs it
#: holds, space-separated.
#: Returns "<version token> <bytes>" (one bulk reply: as cheap to parse as a GET), the token
#: alone when it is the reader's (the entry is unchanged: its bytes are not sent again), or
#: false; for an entry stored split, {token, entry, digest, blob, ...} with the blobs it names
#: that the reader does not hold (false in place of a blob that is missing).
READ = """
local version = redis.call('HGET', KEYS[2], ARGV[1]) or ''
local sp = string.find(version, ' ', 1, true)
if sp then version = string.sub(version, 1, sp - 1) end
if version ~= '' and version == ARGV[2] and redis.call('EXISTS', KEYS[1]) == 1 then
  return version
end
local data = redis.call('GET', KEYS[1])
if not data then return false end
if string.sub(data, 1, 1) ~= '@' then return version .. ' ' .. data end
local held = {}
for digest in string.gmatch(ARGV[3], '%S+') do held[digest] = true end
local out = {version, data}
local tag = string.sub(KEYS[2], 1, -3)
for digest in string.gmatch(redis.call('HGET', KEYS[3], ARGV[1]) or '', '%S+') do
  if not held[digest] then
    out[#out + 1] = digest
    out[#out + 1] = redis.call('GET', tag .. ':b:' .. digest .. ':' .. ARGV[1])
  end
end
return out
"""

#: KEYS: 1 receipt, 2 keys zset, 3 recency zset, 4 version hash, 5 parts hash, then d
#: receipts to delete (batches of this writer already acknowledged), then the n entries.
#: ARGV: 1 receipt ttl (s), 2 d, 3 n, then per write:
#:   action ('S' set, 'D' delete), guard ('B' blind, 'A' absent, 'T' version token,
#:   'V' value bytes), key, new version token, expected (token or bytes), data, recency code,
#:   parts (the digests of the blobs the new entry names, space-separated; '' when whole),
#:   nb, then nb pairs of digest and bytes: the blobs sent (those the server may lack).
#: Returns {statuses ('L' landed, 'C' conflict, 'E' error, 'M' a blob it names is neither
#: sent nor stored: nothing written), then for each C the current bytes, version token and
#: {digest, blob, ...} of the blobs they name, for each E the error, '' and {}, in order} or
#: {'aborted'} when the batch was declared lost before it ran.
WRITE = """
local receipt = redis.call('GET', KEYS[1])
local d = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local first = 5 + d
local tag = string.sub(KEYS[2], 1, -3)
local writes = {}
local at = 4
for i = 1, n do
  writes[i] = at
  at = at + 9 + 2 * tonumber(ARGV[at + 8])
end
local function blob_key(digest, field)
  return tag .. ':b:' .. digest .. ':' .. field
end
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
-- The stored entry of field, and {digest, blob, ...} of the blobs it names when split.
local function current_of(entry, field)
  local data = try('GET', entry)
  local blobs = {}
  if data and string.sub(data, 1, 1) == '@' then
    for digest in string.gmatch(redis.call('HGET', KEYS[5], field) or '', '%S+') do
      blobs[#blobs + 1] = digest
      blobs[#blobs + 1] = redis.call('GET', blob_key(digest, field))
    end
  end
  return data or false, blobs
end
if receipt then
  if receipt == 'aborted' then return {'aborted'} end
  local out = {receipt}
  for i = 1, n do
    local status = string.sub(receipt, i, i)
    if status == 'C' then
      local field = ARGV[writes[i] + 2]
      local token = version_of(field)
      local current, blobs = current_of(KEYS[first + i], field)
      out[#out + 1] = current
      out[#out + 1] = token or ''
      out[#out + 1] = blobs
    elseif status == 'E' then
      out[#out + 1] = 'failed when this batch first ran'
      out[#out + 1] = ''
      out[#out + 1] = {}
    end
  end
  return out
end
local types = {'zset', 'zset', 'hash', 'hash'}
for j = 2, 5 do
  local t = redis.call('TYPE', KEYS[j])['ok']
  if t ~= 'none' and t ~= types[j - 1] then
    return redis.error_reply('WRONGTYPE aiosessions index ' .. KEYS[j] .. ' is a ' .. t)
  end
end
for j = 6, 5 + d do redis.call('DEL', KEYS[j]) end
local statuses = {}
local out = {''}
for i = 1, n do
  local b = writes[i]
  local action, guard, field = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local token, expected, data, code = ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
  local parts, nb = ARGV[b + 7], tonumber(ARGV[b + 8])
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
  local sent, missing = {}, false
  if ok and action == 'S' then
    for k = 1, nb do sent[ARGV[b + 7 + 2 * k]] = ARGV[b + 8 + 2 * k] end
    for digest in string.gmatch(parts, '%S+') do
      if not sent[digest] and redis.call('EXISTS', blob_key(digest, field)) == 0 then missing = true end
    end
  end
  if ok and not missing then
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
    out[#out + 1] = {}
  elseif missing then
    statuses[i] = 'M'
  elseif ok then
    -- The blobs the new entry names are stored; those the old one named and it does not, gone.
    local keep = {}
    for digest, blob in pairs(sent) do redis.call('SET', blob_key(digest, field), blob) end
    for digest in string.gmatch(parts, '%S+') do keep[digest] = true end
    for digest in string.gmatch(redis.call('HGET', KEYS[5], field) or '', '%S+') do
      if not keep[digest] then redis.call('DEL', blob_key(digest, field)) end
    end
    if parts ~= '' then
      redis.call('HSET', KEYS[5], field, parts)
    else
      redis.call('HDEL', KEYS[5], field)
    end
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
    local now, blobs = current_of(entry, field)
    out[#out + 1] = now
    out[#out + 1] = current or ''
    out[#out + 1] = blobs
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

#: KEYS: 1 the store's marker. ARGV: 1 the marker it must hold, 2 the marker it becomes.
#: Returns the marker it holds afterwards (a store moved forward by another process too).
UPGRADE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end
return redis.call('GET', KEYS[1])
"""
