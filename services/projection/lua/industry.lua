-- Set members' counted degree in ONE industry (both keys share the industry's hash tag).
-- Absolute values, so re-running it after a crash changes nothing.
-- KEYS: the industry's zset (member -> degree), its connection sum. ARGV[1]: JSON
-- [[member, degree], ...] where degree -1 removes the member from the industry.
for _, entry in ipairs(cjson.decode(ARGV[1])) do
  local m, deg = entry[1], entry[2]
  local old = tonumber(redis.call('ZSCORE', KEYS[1], m) or '-1')
  if deg < 0 then
    if old >= 0 then
      redis.call('ZREM', KEYS[1], m)
      redis.call('INCRBY', KEYS[2], 0 - old)  -- not -old: Lua's -0 is no integer to Redis
    end
  elseif old ~= deg then
    redis.call('ZADD', KEYS[1], deg, m)
    redis.call('INCRBY', KEYS[2], deg - math.max(old, 0))
  end
end
return 0
