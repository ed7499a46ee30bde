-- The steps of applying events to the read models, as functions. Scripts that start with
-- `--! use steps` get them (shared/scripts.py puts this file before theirs): the per-step
-- scripts a Redis Cluster runs slot by slot (member, industry, counted, seen, marks), and
-- chunk.lua, which runs a whole chunk in one call on one node. One definition of each step.
local call = redis.call

-- Key names, as services/projection/store.py's Keyspace spells them.
local function member_key(ns, kind, m) return ns .. kind .. ':{' .. m .. '}' end
-- An industry's figures: how many counted members have each degree (a histogram), their
-- degrees' sum, and on a cluster each member's change count and counted degree.
local function industry_keys(ns, name)
  local tag = ':{i:' .. name .. '}'
  return ns .. 'ih' .. tag, ns .. 'isum' .. tag, ns .. 'iver' .. tag, ns .. 'idg' .. tag
end
-- Where an industry's figures were kept before the histogram: each counted member's degree
-- in a sorted set. A connection then cost a skiplist move per member (ZINCRBY, 6.5 us at a
-- million events: a fifth of the apply's Redis time); the histogram costs a hash update per
-- degree a chunk moves.
local function legacy_industry_key(ns, name) return ns .. 'iz:{i:' .. name .. '}' end

local function as_set(list)
  local set = {}
  for _, item in ipairs(list) do set[item] = true end
  return set
end

local function hmax(key, field, ts)
  local cur = tonumber(call('HGET', key, field) or '0')
  if ts > cur then call('HSET', key, field, ts) end
end

-- All or nothing: Redis does not undo a script's writes when a later command fails, so
-- every key that a batch's ops will write or read is checked for its type before anything
-- of the batch is written: a key of the wrong kind refuses the batch, never half an event.
local WRITES = {
  ['c+'] = {'c', 'ca'}, ['c-'] = {'c', 'ca', 'fg', 'fgn', 'fw', 'fwn'},
  ['fg+'] = {'fg', 'fgn'}, ['fg-'] = {'c', 'fg', 'fgn'}, ['fw+'] = {'fw', 'fwn'},
  ['fw-'] = {'c', 'fw', 'fwn'}, ['bl+'] = {'bl'}, ['bl-'] = {'bl'},
  ['blby+'] = {'blby'}, ['blby-'] = {'blby'}, ['ir+'] = {'ir'}, ['ir-'] = {'ir'},
  ['is+'] = {'is'}, ['is-'] = {'is'}, e = {'es', 'el', 'cg'}, ['l+'] = {'ls'},
  ['l-'] = {'ls'}, ms = {'ms'}, reg = {'m'}, upd = {'m'}, deact = {'m'},
}
local PROFILE = {reg = true, upd = true, deact = true}  -- ops that may move where m is counted
local KIND = {
  c = 'set', ca = 'hash', fg = 'set', fw = 'set', fgn = 'set', fwn = 'set', bl = 'set',
  blby = 'set', ir = 'hash', is = 'hash', es = 'hash', el = 'hash', cg = 'hash', ls = 'set',
  ms = 'zset', m = 'hash', hw = 'hash', iv = 'string',
}
-- A key's type, probed with a command of that type that answers a number (an error reply
-- for another type, 0 for a missing key): TYPE's status reply cost twice as much. Only a
-- refused probe asks TYPE, for the error's text.
local PROBE = {set = 'SCARD', hash = 'HLEN', zset = 'ZCARD', string = 'STRLEN'}
local function expect(key, kind)
  if type(redis.pcall(PROBE[kind], key)) == 'number' then return end
  local found = call('TYPE', key)['ok']
  return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. kind)
end

-- Every set key of a batch in one call: SINTERCARD looks up each key it is given and refuses
-- the call if one is not a set (a missing key is an empty set), so with a key that never
-- exists it checks them all and stops there (sets are most keys: two TYPE calls per
-- connection became one). Only if refused is each one asked, for the error's key and type.
local function expect_sets(keys, absent)
  for first = 1, #keys, 1000 do  -- under unpack's limit on arguments
    local last = math.min(first + 999, #keys)
    local args = {'SINTERCARD', last - first + 2}
    for j = first, last do args[#args + 1] = keys[j] end
    args[#args + 1] = absent
    if type(redis.pcall(unpack(args))) ~= 'number' then
      for j = first, last do
        local refused = expect(keys[j], 'set')
        if refused then return refused end
      end
    end
  end
end

-- batch: [[member, ops], ...] with ops [[event_id, ts, source partition, offset, kind,
-- args...], ...]. Returns an error reply for the first key of the wrong type, else nil.
-- On a cluster every member's results read m and c, and hw and iv are written. With
-- `one_node` (see apply_members) m and c are read only after a profile change, hw and iv
-- not at all, and the ci of other members is read without failing (pcall). On a cluster a
-- call holds one member: its keys, and the absent one named after it, share its slot.
local function check_members(ns, batch, one_node)
  local checked, sets = {}, {}  -- key -> true: each key's type once per batch; set keys
  local function check_key(key, kind)
    if checked[key] then return end
    checked[key] = true
    if kind == 'set' then
      sets[#sets + 1] = key  -- checked all at once, below
      return
    end
    return expect(key, kind)
  end
  local function check(m, name) return check_key(member_key(ns, name, m), KIND[name]) end
  for _, entry in ipairs(batch) do
    local m = entry[1]
    if not one_node then
      for _, name in ipairs({'m', 'c', 'hw', 'iv'}) do
        local refused = check(m, name)
        if refused then return refused end
      end
    end
    for _, op in ipairs(entry[2]) do
      local kind = op[5]
      if one_node and PROFILE[kind] then
        local refused = check(m, 'c')
        if refused then return refused end
      end
      for _, name in ipairs(WRITES[kind] or {}) do
        local refused = check(m, name)
        if refused then return refused end
      end
      if kind == 'l+' or kind == 'l-' then check_key(member_key(ns, 'l', m) .. ':' .. op[6], 'set') end
    end
  end
  if #batch > 0 then return expect_sets(sets, member_key(ns, 'absent', batch[1][1])) end
end

-- Follows. A connection means each follows the other (ConnectionAccepted says so): that is
-- kept in `c` alone, not in two more sets per side (~15% of the apply's Redis time).
-- A member's `fg` (following) and `fw` (followers) hold the follows their connections do
-- not imply, `fgn` and `fwn` the connections whose follow stopped: following is
-- (c - fgn) + fg, counted by queries/members.py. Invariants: fgn and fwn lie in c, and
-- share nothing with fg and fw.
local function follow(explicit, stopped, other)
  call('SREM', stopped, other); call('SADD', explicit, other)
end
local function unfollow(connections, explicit, stopped, other)
  call('SREM', explicit, other)
  if call('SISMEMBER', connections, other) == 1 then call('SADD', stopped, other) end
end
-- A connection ends: its follows go on (a FollowStopped ends them) unless stopped already.
local function outlive(explicit, stopped, other)
  if call('SREM', stopped, other) == 0 then call('SADD', explicit, other) end
end

-- Apply each member's ops (same batch shape as check_members). Ops are last-writer-wins
-- (set/hash assignments), so re-running a member's ops after a crash gives the same state;
-- the one additive op (engagement score) is let in once per event (below). Returns per
-- member {counted industry or '', industry now (if active) or '', degree, change count}.
-- On a cluster, results travel through the caller to the industry scripts, so each member
-- keeps a change count (iv) that orders them, and a high-water offset per source partition
-- (hw) against a stalled replica's late ops. With `one_node`, chunk.lua does it all in one
-- call: it skips what the stored positions are past, no result can go stale on the way,
-- a member whose profile did not change gets only their degree and its change ({counted,
-- delta, degree}), one whose profile changed also the change (a fifth entry), and a member
-- whose figures cannot move gets `false`.
local function apply_members(ns, batch, clock, ttl, one_node)
  local results = {}
  local stamps = {}  -- clock keys to set to `clock` (lc, cc), in one MSET per 500
  -- Text once: a number in a call's arguments is formatted (%.17g) on every use.
  local stamp = tostring(clock)
  for i, entry in ipairs(batch) do
    local m, ops = entry[1], entry[2]
    local tag = ':{' .. m .. '}'
    local function k(kind) return ns .. kind .. tag end
    -- touched: a change other than to connections; linked: connections changed (by
    -- `delta`); profiled: where the member is counted may have changed.
    local touched, linked, changed, profiled, delta = false, false, false, false, 0
    for _, op in ipairs(ops) do
      local eid, ts, src, off, kind = op[1], op[2], op[3], op[4], op[5]
      -- Once per member per source partition, in offset order: an op at or below the
      -- member's high-water offset for that partition was applied (a re-delivery, or a
      -- replica that stalled past its session and lost the partition) and is skipped.
      local fresh = true
      if src ~= '' and not one_node then
        if off <= tonumber(call('HGET', k('hw'), src) or '-1') then
          fresh = false
        else
          call('HSET', k('hw'), src, off)
        end
      end
      if fresh then
        changed = true
        if kind == 'c+' then
          if call('SADD', k('c'), op[6]) == 1 then
            -- op[7]: whole seconds, as text (to_ops): Redis keeps an integer in a listpack
            -- in 5 bytes, a float's text in 16 (`ca` holds one entry per connection, the
            -- read models' largest part), and a number argument is formatted on each call.
            call('HSET', k('ca'), op[6], op[7]); delta = delta + 1
          else
            -- Connected already (no service sends that): the connection's follows hold
            -- again, both ways. pcall: these keys are not type-checked (checking two more
            -- keys per connection cost ~10% of its time), and an error here would leave the
            -- chunk half done.
            redis.pcall('SREM', k('fgn'), op[6]); redis.pcall('SREM', k('fwn'), op[6])
          end
          linked = true
        elseif kind == 'c-' then
          if call('SREM', k('c'), op[6]) == 1 then
            delta = delta - 1
            outlive(k('fg'), k('fgn'), op[6]); outlive(k('fw'), k('fwn'), op[6])
          end
          call('HDEL', k('ca'), op[6])
          linked = true
        elseif kind == 'fg+' then follow(k('fg'), k('fgn'), op[6])
        elseif kind == 'fg-' then unfollow(k('c'), k('fg'), k('fgn'), op[6])
        elseif kind == 'fw+' then follow(k('fw'), k('fwn'), op[6])
        elseif kind == 'fw-' then unfollow(k('c'), k('fw'), k('fwn'), op[6])
        elseif kind == 'bl+' then call('SADD', k('bl'), op[6]); touched = true
        elseif kind == 'bl-' then call('SREM', k('bl'), op[6]); touched = true
        elseif kind == 'blby+' then call('SADD', k('blby'), op[6]); touched = true
        elseif kind == 'blby-' then call('SREM', k('blby'), op[6]); touched = true
        elseif kind == 'ir+' then call('HSET', k('ir'), op[6], op[7] .. '|' .. ts); touched = true
        elseif kind == 'ir-' then call('HDEL', k('ir'), op[6]); touched = true
        elseif kind == 'is+' then call('HSET', k('is'), op[6], op[7] .. '|' .. ts); touched = true
        elseif kind == 'is-' then call('HDEL', k('is'), op[6]); touched = true
        elseif kind == 'e' then
          -- The one additive op: marked per event on a cluster, where a member's call may
          -- run again after the batch's marks were checked. On one node the chunk's own
          -- marks (chunk.lua, same call) already let each event in once.
          if one_node or call('SET', ns .. 'sn' .. tag .. ':' .. eid, '1', 'NX', 'EX', ttl) then
            call('HINCRBYFLOAT', k('es'), op[6], op[7])
          end
          hmax(k('el'), op[6], ts)
          if op[8] == 1 then hmax(k('cg'), op[6], ts) end
        elseif kind == 'l+' then
          call('SADD', k('l') .. ':' .. op[6], op[7]); call('SADD', k('ls'), op[6])
        elseif kind == 'l-' then
          local key = k('l') .. ':' .. op[6]
          call('SREM', key, op[7])
          if call('SCARD', key) == 0 then call('SREM', k('ls'), op[6]) end
        elseif kind == 'ms' then
          call('ZADD', k('ms'), ts, cjson.encode({eid, op[6], op[7]}))
          call('ZREMRANGEBYRANK', k('ms'), 0, -21)  -- keep the 20 latest milestones
        elseif kind == 'reg' or kind == 'upd' then
          local args = {}
          for f, val in pairs(op[6]) do args[#args + 1] = f; args[#args + 1] = val end
          if kind == 'reg' then args[#args + 1] = 'active'; args[#args + 1] = '1' end
          if #args > 0 then call('HSET', k('m'), unpack(args)) end
          touched, profiled = true, true
        elseif kind == 'deact' then
          call('HSET', k('m'), 'active', '0'); touched, profiled = true, true
        end
      end
    end
    -- When the member last changed (suggestions' freshness) is the later of the two clocks.
    if touched then stamps[#stamps + 1] = k('lc') end
    -- Connections changed: viewer network caches built before this clock that include this
    -- member (their own, or as a 1st-degree connection) are no longer valid (see graph.lua).
    if linked then stamps[#stamps + 1] = k('cc') end

    -- What the industry aggregates need: where the member is counted now, where it belongs,
    -- its degree, and its change count (industries keep the newest they applied).
    if one_node and not profiled then
      -- Where the member is counted is where it belongs (only a profile change moves it):
      -- the figures move by the degree's change, if any.
      local counted = delta ~= 0 and redis.pcall('HGET', k('m'), 'ci')
      if type(counted) ~= 'string' then counted = false end  -- not counted, or m unreadable
      results[i] = counted and {counted = counted, delta = delta, degree = call('SCARD', k('c'))}
        or false
    else
      local version = 0  -- one node: nothing lies between this result and its use
      if not one_node then
        version = changed and call('INCR', k('iv')) or tonumber(call('GET', k('iv')) or '0')
      end
      local v = call('HMGET', k('m'), 'industry', 'active', 'ci')
      local now_ind = ''
      if v[2] == '1' and v[1] then now_ind = v[1] end
      -- On one node also the degree's change, so the degree counted before is known.
      results[i] = {v[3] or '', now_ind, call('SCARD', k('c')), version, one_node and delta or nil}
    end
  end
  -- One call for many keys where the keys may lie in several slots (one node); a cluster's
  -- call holds one member, whose keys share a slot.
  for first = 1, #stamps, 500 do
    local args = {}
    for j = first, math.min(first + 499, #stamps) do
      args[#args + 1] = stamps[j]; args[#args + 1] = stamp
    end
    call('MSET', unpack(args))
  end
  return results
end

-- Move a member's counted degree in one industry's histogram from `old` to `new` (-1: not
-- counted there), in `tally` (histogram key -> {degree -> change}): a call's moves are
-- written once per industry and degree at its end (write_tally), where most cancel (members
-- going from d to d+1 while others come from d-1 to d). Returns the change to the
-- industry's degrees' sum.
local function tally_move(tally, hist, old, new)
  if old == new then return 0 end
  local changes = tally[hist]
  if not changes then
    changes = {}
    tally[hist] = changes
  end
  if old >= 0 then changes[old] = (changes[old] or 0) - 1 end
  if new >= 0 then changes[new] = (changes[new] or 0) + 1 end
  return math.max(new, 0) - math.max(old, 0)
end
local function write_tally(tally)
  for hist, changes in pairs(tally) do
    for degree, n in pairs(changes) do
      if n ~= 0 and call('HINCRBY', hist, degree, n) <= 0 then call('HDEL', hist, degree) end
    end
  end
end
-- An industry still in the sorted-set layout (written before the histogram) becomes a
-- histogram the first time a script touches it, in that script: degrees counted, and on a
-- cluster each member's degree kept (`degrees`, nil on one node), then the set dropped.
local function upgrade_industry(legacy, hist, degrees)
  if call('EXISTS', legacy) == 0 then return end
  local scored = call('ZRANGE', legacy, 0, -1, 'WITHSCORES')
  for j = 1, #scored, 2 do
    call('HINCRBY', hist, scored[j + 1], 1)
    if degrees then call('HSET', degrees, scored[j], scored[j + 1]) end
  end
  call('DEL', legacy)
end
-- A cluster's industry step, for several members, versioned: an entry older than the newest
-- this industry applied for the member (a stalled replica's late snapshot) is ignored, so a
-- member is never left counted twice or with a stale degree. entries: [[member, degree,
-- version]], degree -1 to leave. The industry holds each member's counted degree
-- (`degrees`), since its step cannot read the member's keys.
local function apply_industry(legacy, hist, sum, versions, degrees, entries)
  upgrade_industry(legacy, hist, degrees)
  local tally, added = {}, 0
  for _, entry in ipairs(entries) do
    local m, deg, version = entry[1], entry[2], entry[3]
    if version > tonumber(call('HGET', versions, m) or '-1') then
      call('HSET', versions, m, version)
      local old = tonumber(call('HGET', degrees, m) or '-1')
      if deg < 0 then call('HDEL', degrees, m) else call('HSET', degrees, m, deg) end
      added = added + tally_move(tally, hist, old, deg)
    end
  end
  write_tally(tally)
  if added ~= 0 then call('INCRBY', sum, added) end
end

-- Record where a member is counted (`ci`), only by the writer holding the member's current
-- change count: a stalled replica's older snapshot cannot move it back. Returns 1 if written.
-- (No change count on one node: `change_count` nil.)
local function record_counted(profile, change_count, now, version)
  if change_count and tonumber(call('GET', change_count) or '0') ~= tonumber(version) then
    return 0
  end
  if now == '' then
    call('HDEL', profile, 'ci')
  else
    call('HSET', profile, 'ci', now)
  end
  return 1
end

-- Applied-marks live in hashes, one per period of the dedupe TTL (the period a mark was
-- written in, `period`: the caller's clock over the TTL), each expiring whole once the
-- period after it has ended: a mark lives one to two TTLs. One HMGET per period reads a
-- whole chunk's marks and one HSET writes them, where a key per event cost two calls, a key
-- and an expiry entry each (~13% of the apply's Redis time, 169 bytes per event).
local function marks_key(ns, name, period) return ns .. name .. '{g}:' .. period end
-- The marks of `ids` in the live periods of `name`'s hashes (the one before, this one, and
-- the one after, for clocks a little apart): id -> mark.
local function marks_of(ns, name, ids, period)
  local found = {}
  for p = period - 1, period + 1 do
    local key = marks_key(ns, name, p)
    if #ids > 0 and call('EXISTS', key) == 1 then
      for first = 1, #ids, 1000 do  -- under unpack's limit on arguments
        local last = math.min(first + 999, #ids)
        local got = call('HMGET', key, unpack(ids, first, last))
        for j = first, last do
          if got[j - first + 1] then found[ids[j]] = got[j - first + 1] end
        end
      end
    end
  end
  return found
end
local function write_marks(key, fields, expires)
  if #fields == 0 then return end
  for first = 1, #fields, 1000 do  -- field, value pairs: 1000 keeps them aligned
    call('HSET', key, unpack(fields, first, math.min(first + 999, #fields)))
  end
  call('EXPIREAT', key, expires)
end

-- Which of these event ids are applied already (1) or not (0).
local function applied_before(ns, ids, period)
  local found, out = marks_of(ns, 'seen', ids, period), {}
  for i, eid in ipairs(ids) do out[i] = found[eid] and 1 or 0 end
  return out
end

-- Mark events applied (for `?after` and the applied count). events: [[event_id, ts,
-- awaits_decision, settles], ...]; an event that awaits a decision is marked 'w' and the
-- decision marks its cause `settled`, so `?after=` of an accepted invitation waits for its
-- connection. Returns the events newly marked (the others were applied before).
local function mark_events(ns, events, ttl, period)
  local ids = {}
  for i, e in ipairs(events) do ids[i] = e[1] end
  local found, marked, marks, settles = marks_of(ns, 'seen', ids, period), {}, {}, {}
  for _, e in ipairs(events) do
    if not found[e[1]] then
      found[e[1]] = true  -- an id twice in `events` is applied once
      marked[#marked + 1] = e
      marks[#marks + 1] = e[1]
      marks[#marks + 1] = (e[3] == 1) and 'w' or '1'
    end
    if e[4] ~= '' then
      settles[#settles + 1] = e[4]
      settles[#settles + 1] = '1'
    end
  end
  local expires = (period + 2) * ttl
  write_marks(marks_key(ns, 'seen', period), marks, expires)
  write_marks(marks_key(ns, 'settled', period), settles, expires)
  return marked
end

-- A version's format (store.py's READ_MODEL_FORMAT) is that of the build whose chunk is
-- the first applied to it: an empty version takes `format`, one with events keeps its own.
local function claim_format(ns, stats, format)
  if not call('HGET', stats, 'applied') then call('SET', ns .. 'format{g}', format, 'NX') end
end

-- Close a batch: count the `marked` events and store the consumed positions. Positions only
-- move forward (a stalled replica's late chunk cannot move one back), except those in
-- `lower` (a log that began again). Returns how many events were newly applied.
local function close_batch(pos, stats, marked, positions, lower)
  local last_ts = 0
  for _, e in ipairs(marked) do
    if e[2] > last_ts then last_ts = e[2] end
  end
  local may_lower = as_set(lower)
  for tp, offset in pairs(positions) do
    if may_lower[tp] or offset > tonumber(call('HGET', pos, tp) or '-1') then
      call('HSET', pos, tp, offset)
    end
  end
  if #marked > 0 then
    call('HINCRBY', stats, 'applied', #marked)
    if last_ts > tonumber(call('HGET', stats, 'last_event_ts') or '0') then
      call('HSET', stats, 'last_event_ts', last_ts)
    end
  end
  return #marked
end
