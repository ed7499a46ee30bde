-- Close a batch: mark its events applied (for `?after` and the applied count) and store the
-- consumed positions. Runs after the per-member and per-industry scripts succeeded, on keys
-- that share the `{g}` hash tag. KEYS: positions hash, stats hash. ARGV: keyspace prefix,
-- JSON [[event_id, ts, awaits_decision, settles], ...], JSON {"topic:partition": offset},
-- dedupe TTL, JSON [topic:partition whose position may go back]. An event that awaits a
-- decision is marked 'w'; the decision marks its cause `settled`, so `?after=` of an
-- accepted invitation waits for its connection.
local ns, ttl = ARGV[1], tonumber(ARGV[4])
local applied, last_ts = 0, 0
for _, e in ipairs(cjson.decode(ARGV[2])) do
  local mark = (e[3] == 1) and 'w' or '1'
  if redis.call('SET', ns .. 'seen{g}:' .. e[1], mark, 'NX', 'EX', ttl) then
    applied = applied + 1
    if e[2] > last_ts then last_ts = e[2] end
  end
  if e[4] ~= '' then redis.call('SET', ns .. 'settled{g}:' .. e[4], '1', 'EX', ttl) end
end
-- Positions only move forward (a stalled replica's late chunk cannot move one back), except
-- those in ARGV[5] (a log that began again).
local lower = {}
for _, tp in ipairs(cjson.decode(ARGV[5] or '[]')) do lower[tp] = true end
for tp, offset in pairs(cjson.decode(ARGV[3])) do
  if lower[tp] or offset > tonumber(redis.call('HGET', KEYS[1], tp) or '-1') then
    redis.call('HSET', KEYS[1], tp, offset)
  end
end
if applied > 0 then
  redis.call('HINCRBY', KEYS[2], 'applied', applied)
  if last_ts > tonumber(redis.call('HGET', KEYS[2], 'last_event_ts') or '0') then
    redis.call('HSET', KEYS[2], 'last_event_ts', last_ts)
  end
end
return applied
