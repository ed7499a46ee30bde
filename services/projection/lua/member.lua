-- Apply one batch's effects, member by member. Every key touched for a member carries that
-- member's hash tag: on Redis Cluster the caller sends one member per call (KEYS[1] routes it
-- to the member's slot); on a single node it sends many members per call, same data layout.
-- Ops are last-writer-wins (set/hash assignments), so re-running a member's ops after a
-- crash gives the same state; the one additive op (engagement score) is marked per member.
-- KEYS: the members' profile keys. ARGV: keyspace prefix, JSON [[member, ops], ...] with
-- ops [[event_id, ts, source partition, offset, kind, args...], ...], clock, dedupe TTL,
-- '1' to only check (see below).
-- Returns per member {counted industry or '', industry now (if active) or '', degree,
-- change count}.
local ns = ARGV[1]
local batch = cjson.decode(ARGV[2])
local clock, ttl = ARGV[3], tonumber(ARGV[4])
local results = {}
local call = redis.call
local tag = ''
local function k(kind) return ns .. kind .. tag end
local function hmax(key, field, ts)
  local cur = tonumber(call('HGET', key, field) or '0')
  if ts > cur then call('HSET', key, field, ts) end
end

-- All or nothing: Redis does not undo a script's writes when a later command fails, so the
-- caller first runs this script in check mode (ARGV[5] = '1') over every member of a chunk:
-- every key the ops will write or read is checked for its type. A key of the wrong kind
-- refuses the chunk before anything of it is written, never half an event.
local WRITES = {
  ['c+'] = {'c', 'ca'}, ['c-'] = {'c', 'ca'}, ['fg+'] = {'fg'}, ['fg-'] = {'fg'},
  ['fw+'] = {'fw'}, ['fw-'] = {'fw'}, ['bl+'] = {'bl'}, ['bl-'] = {'bl'},
  ['blby+'] = {'blby'}, ['blby-'] = {'blby'}, ['ir+'] = {'ir'}, ['ir-'] = {'ir'},
  ['is+'] = {'is'}, ['is-'] = {'is'}, e = {'es', 'el', 'cg'}, ['l+'] = {'ls'},
  ['l-'] = {'ls'}, ms = {'ms'},
}
local KIND = {
  c = 'set', ca = 'hash', fg = 'set', fw = 'set', bl = 'set', blby = 'set', ir = 'hash',
  is = 'hash', es = 'hash', el = 'hash', cg = 'hash', ls = 'set', ms = 'zset', m = 'hash',
  hw = 'hash', iv = 'string',
}
local function expect(key, kind)
  local found = call('TYPE', key)['ok']
  if found ~= 'none' and found ~= kind then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. kind)
  end
end
if ARGV[5] == '1' then
for _, entry in ipairs(batch) do
  tag = ':{' .. entry[1] .. '}'
  local checked = {m = true, c = true, hw = true, iv = true}
  for _, name in ipairs({'m', 'c', 'hw', 'iv'}) do
    local refused = expect(k(name), KIND[name])
    if refused then return refused end
  end
  for _, op in ipairs(entry[2]) do
    for _, name in ipairs(WRITES[op[5]] or {}) do
      if not checked[name] then
        checked[name] = true
        local refused = expect(k(name), KIND[name])
        if refused then return refused end
      end
    end
    if op[5] == 'l+' or op[5] == 'l-' then
      local refused = expect(k('l') .. ':' .. op[6], 'set')
      if refused then return refused end
    end
  end
end
return 'ok'
end

for i, entry in ipairs(batch) do
local m, ops = entry[1], entry[2]
tag = ':{' .. m .. '}'

local touched, linked, changed = false, false, false
for _, op in ipairs(ops) do
  local eid, ts, src, off, kind = op[1], op[2], op[3], op[4], op[5]
  -- Once per member per source partition, in offset order: an op at or below the member's
  -- high-water offset for that partition was applied (a re-delivery, or a replica that
  -- stalled past its session and lost the partition) and is skipped.
  local fresh = true
  if src ~= '' then
    if off <= tonumber(call('HGET', k('hw'), src) or '-1') then
      fresh = false
    else
      call('HSET', k('hw'), src, off)
    end
  end
  if fresh then
    changed = true
    if kind == 'c+' then
      if redis.call('SADD', k('c'), op[6]) == 1 then redis.call('HSET', k('ca'), op[6], ts) end
      touched, linked = true, true
    elseif kind == 'c-' then
      redis.call('SREM', k('c'), op[6]); redis.call('HDEL', k('ca'), op[6])
      touched, linked = true, true
    elseif kind == 'fg+' then redis.call('SADD', k('fg'), op[6])
    elseif kind == 'fg-' then redis.call('SREM', k('fg'), op[6])
    elseif kind == 'fw+' then redis.call('SADD', k('fw'), op[6])
    elseif kind == 'fw-' then redis.call('SREM', k('fw'), op[6])
    elseif kind == 'bl+' then redis.call('SADD', k('bl'), op[6]); touched = true
    elseif kind == 'bl-' then redis.call('SREM', k('bl'), op[6]); touched = true
    elseif kind == 'blby+' then redis.call('SADD', k('blby'), op[6]); touched = true
    elseif kind == 'blby-' then redis.call('SREM', k('blby'), op[6]); touched = true
    elseif kind == 'ir+' then redis.call('HSET', k('ir'), op[6], op[7] .. '|' .. ts); touched = true
    elseif kind == 'ir-' then redis.call('HDEL', k('ir'), op[6]); touched = true
    elseif kind == 'is+' then redis.call('HSET', k('is'), op[6], op[7] .. '|' .. ts); touched = true
    elseif kind == 'is-' then redis.call('HDEL', k('is'), op[6]); touched = true
    elseif kind == 'e' then
      if redis.call('SET', ns .. 'sn' .. tag .. ':' .. eid, '1', 'NX', 'EX', ttl) then
        redis.call('HINCRBYFLOAT', k('es'), op[6], op[7])
      end
      hmax(k('el'), op[6], ts)
      if op[8] == 1 then hmax(k('cg'), op[6], ts) end
    elseif kind == 'l+' then
      redis.call('SADD', k('l') .. ':' .. op[6], op[7]); redis.call('SADD', k('ls'), op[6])
    elseif kind == 'l-' then
      local key = k('l') .. ':' .. op[6]
      redis.call('SREM', key, op[7])
      if redis.call('SCARD', key) == 0 then redis.call('SREM', k('ls'), op[6]) end
    elseif kind == 'ms' then
      redis.call('ZADD', k('ms'), ts, cjson.encode({eid, op[6], op[7]}))
      redis.call('ZREMRANGEBYRANK', k('ms'), 0, -21)  -- keep the 20 latest milestones
    elseif kind == 'reg' or kind == 'upd' then
      local args = {}
      for f, val in pairs(op[6]) do args[#args + 1] = f; args[#args + 1] = val end
      if kind == 'reg' then args[#args + 1] = 'active'; args[#args + 1] = '1' end
      if #args > 0 then redis.call('HSET', k('m'), unpack(args)) end
      touched = true
    elseif kind == 'deact' then
      redis.call('HSET', k('m'), 'active', '0'); touched = true
    end
  end
end
if touched then redis.call('SET', k('lc'), clock) end
-- Connections changed: viewer network caches built before this clock that include this
-- member (their own, or as a 1st-degree connection) are no longer valid (see graph.lua).
if linked then redis.call('SET', k('cc'), clock) end

-- What the industry aggregates need: where the member is counted now, where it belongs, its
-- degree, and its change count (industries keep the newest they applied).
local version
if changed then
  version = call('INCR', k('iv'))
else
  version = tonumber(call('GET', k('iv')) or '0')
end
local v = redis.call('HMGET', k('m'), 'industry', 'active', 'ci')
local now_ind = ''
if v[2] == '1' and v[1] then now_ind = v[1] end
results[i] = {v[3] or '', now_ind, redis.call('SCARD', k('c')), version}
end
return results
