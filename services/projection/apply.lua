-- Apply one batch of events to the read model, atomically with their dedupe marks and the
-- consumed positions. KEYS[1]: keyspace prefix (one version). ARGV[1]: JSON ops
-- [[event_id, ts, kind, args...], ...]; ARGV[2]: JSON {"topic:partition": next_offset};
-- ARGV[3]: dedupe TTL seconds. Returns the number of ops applied (not duplicates).
local ns = KEYS[1]
local ops = cjson.decode(ARGV[1])
local positions = cjson.decode(ARGV[2])
local ttl = tonumber(ARGV[3])
local clock = redis.call('INCR', ns .. 'clock')

local function mk(kind, m) return ns .. kind .. ':{' .. m .. '}' end
local function touch(m) redis.call('HSET', ns .. 'lc', m, clock) end
local function touch2(a, b) redis.call('HSET', ns .. 'lc', a, clock, b, clock) end

-- Industry aggregates follow (active, industry, degree) of a member, whatever order the
-- events arrived in. `ci` on the profile is the industry the member is counted in; the
-- member's score in that industry's zset is the degree counted there.
local function reindex(m)
  local prof = mk('m', m)
  local v = redis.call('HMGET', prof, 'industry', 'active', 'ci')
  local deg = redis.call('SCARD', mk('c', m))
  local now_ind = false
  if v[2] == '1' and v[1] then now_ind = v[1] end
  local ci = v[3]
  if ci then
    local cd = tonumber(redis.call('ZSCORE', ns .. 'iz:' .. ci, m) or '0')
    redis.call('ZREM', ns .. 'iz:' .. ci, m)
    redis.call('HINCRBY', ns .. 'isum', ci, 0 - cd)  -- not -cd: Lua's -0 is no integer to Redis
  end
  if now_ind then
    redis.call('ZADD', ns .. 'iz:' .. now_ind, deg, m)
    redis.call('HINCRBY', ns .. 'isum', now_ind, deg)
    redis.call('SADD', ns .. 'inds', now_ind)
    redis.call('HSET', prof, 'ci', now_ind)
  elseif ci then
    redis.call('HDEL', prof, 'ci')
  end
end

-- A connection gained or lost: move the counted degree by one, without a full reindex.
local function recount(m, delta)
  local ci = redis.call('HGET', mk('m', m), 'ci')
  if ci then
    redis.call('ZINCRBY', ns .. 'iz:' .. ci, delta, m)
    redis.call('HINCRBY', ns .. 'isum', ci, delta)
  end
end

local function set_fields(m, fields)
  local args = {}
  for f, val in pairs(fields) do
    args[#args + 1] = f
    args[#args + 1] = val
  end
  if #args > 0 then redis.call('HSET', mk('m', m), unpack(args)) end
end

local function hmax(key, field, ts)
  local cur = tonumber(redis.call('HGET', key, field) or '0')
  if ts > cur then redis.call('HSET', key, field, ts) end
end

local applied, last_ts = 0, 0
for _, op in ipairs(ops) do
  local eid, ts, kind = op[1], op[2], op[3]
  if redis.call('SET', ns .. 'seen:' .. eid, '1', 'NX', 'EX', ttl) then
    applied = applied + 1
    if ts > last_ts then last_ts = ts end
    if kind == 'c+' then
      local a, b = op[4], op[5]
      if redis.call('SADD', mk('c', a), b) == 1 then
        redis.call('SADD', mk('c', b), a)
        redis.call('HSET', mk('ca', a), b, ts)
        redis.call('HSET', mk('ca', b), a, ts)
        recount(a, 1); recount(b, 1); touch2(a, b)
      end
    elseif kind == 'c-' then
      local a, b = op[4], op[5]
      if redis.call('SREM', mk('c', a), b) == 1 then
        redis.call('SREM', mk('c', b), a)
        redis.call('HDEL', mk('ca', a), b)
        redis.call('HDEL', mk('ca', b), a)
        recount(a, -1); recount(b, -1); touch2(a, b)
      end
    elseif kind == 'f+' then
      redis.call('SADD', mk('fg', op[4]), op[5]); redis.call('SADD', mk('fw', op[5]), op[4])
    elseif kind == 'f-' then
      redis.call('SREM', mk('fg', op[4]), op[5]); redis.call('SREM', mk('fw', op[5]), op[4])
    elseif kind == 'e' then
      local actor, target, ekind, contrib = op[4], op[5], op[6], op[7]
      redis.call('HINCRBYFLOAT', mk('es', actor), target, contrib)
      redis.call('HINCRBYFLOAT', mk('es', target), actor, contrib)
      hmax(mk('el', actor), target, ts)
      hmax(mk('el', target), actor, ts)
      if ekind == 'congratulate' then hmax(mk('cg', actor), target, ts) end
    elseif kind == 'i+' then
      local inv, s, r = op[4], op[5], op[6]
      redis.call('HSET', mk('ir', r), inv, s .. '|' .. ts)
      redis.call('HSET', mk('is', s), inv, r .. '|' .. ts)
      touch2(s, r)
    elseif kind == 'i-' then
      local inv, s, r = op[4], op[5], op[6]
      redis.call('HDEL', mk('ir', r), inv)
      redis.call('HDEL', mk('is', s), inv)
      touch2(s, r)
    elseif kind == 'reg' then
      set_fields(op[4], op[5])
      redis.call('HSET', mk('m', op[4]), 'active', '1')
      reindex(op[4]); touch(op[4])
    elseif kind == 'upd' then
      set_fields(op[4], op[5])
      reindex(op[4]); touch(op[4])
    elseif kind == 'deact' then
      redis.call('HSET', mk('m', op[4]), 'active', '0')
      reindex(op[4]); touch(op[4])
    elseif kind == 'b+' then
      redis.call('SADD', mk('bl', op[4]), op[5]); redis.call('SADD', mk('blby', op[5]), op[4])
      touch2(op[4], op[5])
    elseif kind == 'b-' then
      redis.call('SREM', mk('bl', op[4]), op[5]); redis.call('SREM', mk('blby', op[5]), op[4])
      touch2(op[4], op[5])
    elseif kind == 'l+' then
      redis.call('SADD', mk('l', op[4]) .. ':' .. op[5], op[6])
      redis.call('SADD', mk('ls', op[4]), op[5])
    elseif kind == 'l-' then
      local key = mk('l', op[4]) .. ':' .. op[5]
      redis.call('SREM', key, op[6])
      if redis.call('SCARD', key) == 0 then redis.call('SREM', mk('ls', op[4]), op[5]) end
    elseif kind == 'ms' then
      local key = mk('ms', op[4])
      redis.call('ZADD', key, ts, cjson.encode({eid, op[5], op[6]}))
      redis.call('ZREMRANGEBYRANK', key, 0, -21)  -- keep the 20 latest milestones
    end
  end
end

local pos_args = {}
for tp, offset in pairs(positions) do
  pos_args[#pos_args + 1] = tp
  pos_args[#pos_args + 1] = offset
end
if #pos_args > 0 then redis.call('HSET', ns .. 'pos', unpack(pos_args)) end
if applied > 0 then
  redis.call('HINCRBY', ns .. 'stats', 'applied', applied)
  local prev = tonumber(redis.call('HGET', ns .. 'stats', 'last_event_ts') or '0')
  if last_ts > prev then redis.call('HSET', ns .. 'stats', 'last_event_ts', last_ts) end
end
return applied
