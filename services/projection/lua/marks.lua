-- Close a batch: mark its events applied (for `?after` and the applied count) and store the
-- consumed positions. Runs after the per-member and per-industry scripts succeeded, on keys
-- that share the `{g}` hash tag. KEYS: positions hash, stats hash. ARGV: keyspace prefix,
-- JSON [[event_id, ts], ...], JSON {"topic:partition": next_offset}, dedupe TTL.
local ns = ARGV[1]
local applied, last_ts = 0, 0
for _, e in ipairs(cjson.decode(ARGV[2])) do
  if redis.call('SET', ns .. 'seen{g}:' .. e[1], '1', 'NX', 'EX', tonumber(ARGV[4])) then
    applied = applied + 1
    if e[2] > last_ts then last_ts = e[2] end
  end
end
local pos = {}
for tp, offset in pairs(cjson.decode(ARGV[3])) do pos[#pos + 1] = tp; pos[#pos + 1] = offset end
if #pos > 0 then redis.call('HSET', KEYS[1], unpack(pos)) end
if applied > 0 then
  redis.call('HINCRBY', KEYS[2], 'applied', applied)
  if last_ts > tonumber(redis.call('HGET', KEYS[2], 'last_event_ts') or '0') then
    redis.call('HSET', KEYS[2], 'last_event_ts', last_ts)
  end
end
return applied
