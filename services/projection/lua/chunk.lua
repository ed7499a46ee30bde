--! use steps
-- One node: a whole chunk in one call, so the projection sends one script per chunk and
-- decodes the next while Redis runs it. The steps the per-slot scripts run on a cluster
-- (steps.lua), in one atomic call: drop events repeated in the chunk or at an offset the
-- stored positions are past (a stalled replica's late chunk), check the type of every key
-- the rest will touch (nothing is written if one is wrong), mark them applied (those marked
-- before were applied before and are dropped), apply each member's ops, move the industry
-- figures, record where members are counted, store the positions.
-- KEYS: positions hash, stats hash, the caller's order key. ARGV: keyspace prefix, the
-- chunk's events as one flat JSON list, each event as event_id, ts, awaits_decision,
-- settles, source, offset, its number of ops, then each op as member, its length n, and n
-- items: kind, args... (source: the event's partition and epoch, by its number in ARGV[8];
-- each op is then as member.lua takes it, [event_id, ts, source, offset, kind, args...]), JSON
-- {"topic:partition": offset}, dedupe TTL, JSON [topic:partition whose position may go back],
-- the chunk that must have run before this one ('' for none), this chunk's name ('' to leave
-- the order key as it is), JSON [source, ...] (`topic:partition#epoch`, '' for none), the
-- marks' period (steps.lua's marks_key), this build's read-model format.
-- Returns how many events were newly applied, or -1 if the chunk named in ARGV[6] has not
-- run (the caller sends two chunks before the first answers; this one overtook it, on
-- another connection, and is sent again once that one answered).
if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[6] then return -1 end
local ns, ttl = ARGV[1], tonumber(ARGV[4])
claim_format(ns, KEYS[2], ARGV[10])
local lower, stored, partition_of = cjson.decode(ARGV[5]), {}, {}
local sources = cjson.decode(ARGV[8])
local may_lower = as_set(lower)
-- Whether the stored position of the event's partition is past it; the position is the
-- partition's next offset.
local function past(e)
  local src = sources[e[5]]
  if src == '' then return false end
  local tp = partition_of[src]
  if not tp then
    tp = string.match(src, '^(.*)#') or src
    partition_of[src] = tp
  end
  if may_lower[tp] then return false end
  if stored[tp] == nil then stored[tp] = tonumber(call('HGET', KEYS[1], tp) or '-1') end
  return e[6] < stored[tp]
end
-- The chunk's events: {event_id, ts, awaits_decision, settles, source, offset, where its ops
-- start in `flat`, how many}, one table each.
local flat = cjson.decode(ARGV[2])
local events, at, size = {}, 1, #flat
while at <= size do
  local n = flat[at + 6]
  events[#events + 1] = {flat[at], flat[at + 1], flat[at + 2], flat[at + 3], flat[at + 4],
    flat[at + 5], at + 7, n}
  at = at + 7
  for _ = 1, n do at = at + 2 + flat[at + 1] end
end
-- Events' ops grouped per member, members in order of first appearance. The chunk sends
-- each event's id, time and place once; each op gets them here.
local function by_member(events)
  local per_member, batch = {}, {}
  for _, e in ipairs(events) do
    local eid, ts, src, off = e[1], e[2], sources[e[5]], e[6]
    local op_at = e[7]
    for _ = 1, e[8] do
      local m, n = flat[op_at], flat[op_at + 1]
      if not per_member[m] then
        per_member[m] = {}
        batch[#batch + 1] = {m, per_member[m]}
      end
      local ops = per_member[m]
      ops[#ops + 1] = {eid, ts, src, off, unpack(flat, op_at + 2, op_at + 1 + n)}
      op_at = op_at + 2 + n
    end
  end
  return batch
end

local candidates, ids = {}, {}
for _, e in ipairs(events) do
  if not ids[e[1]] and not (e[8] > 0 and past(e)) then
    ids[e[1]] = true
    candidates[#candidates + 1] = e
  end
end
local batch = by_member(candidates)
local refused = check_members(ns, batch, true)
if refused then return refused end
local marked = mark_events(ns, candidates, ttl, tonumber(ARGV[9]))
if #marked < #candidates then batch = by_member(marked) end
-- The industry figures' changes, summed over the chunk and written at its end: degrees'
-- sums per industry (one INCRBY each) and histogram moves (steps.lua's tally_move). On one
-- node a counted member's figures follow every change of their degree in the same call, so
-- the degree counted before is the degree now less this chunk's change.
local sums, tally = {}, {}
local hists = {}  -- industry -> its histogram's key, once the industry is in that layout
local function move(name, old, new)
  local hist = hists[name]
  if not hist then
    hist = industry_keys(ns, name)
    upgrade_industry(legacy_industry_key(ns, name), hist, nil)
    hists[name] = hist
  end
  sums[name] = (sums[name] or 0) + tally_move(tally, hist, old, new)
end
if #batch > 0 then
  local results = apply_members(ns, batch, call('INCR', ns .. 'clock{g}'), ttl, true)
  for i, entry in ipairs(batch) do
    local m, r = entry[1], results[i]
    if r and r.delta then
      move(r.counted, r.degree - r.delta, r.degree)
    elseif r then
      local counted, now, degree = r[1], r[2], r[3]
      local before = degree - r[5]
      if counted ~= '' and counted ~= now then move(counted, before, -1) end
      if now ~= '' then move(now, counted == now and before or -1, degree) end
      if counted ~= now then
        record_counted(member_key(ns, 'm', m), nil, now, 0)
        if now ~= '' then
          call('ZADD', ns .. 'members{g}', 0, m)
          call('SADD', ns .. 'inds{g}', now)
        else
          call('ZREM', ns .. 'members{g}', m)
        end
      end
    end
  end
end
write_tally(tally)
for name, added in pairs(sums) do
  if added ~= 0 then
    local _, sum = industry_keys(ns, name)
    call('INCRBY', sum, added)
  end
end
if ARGV[7] ~= '' then call('SET', KEYS[3], ARGV[7], 'EX', 600) end
return close_batch(KEYS[1], KEYS[2], marked, cjson.decode(ARGV[3]), lower)
