-- Set members' counted degree in ONE industry (its keys share the industry's hash tag).
-- Absolute values, so re-running it after a crash changes nothing; and versioned: an entry
-- older than the newest this industry applied for the member (a stalled replica's late
-- snapshot) is ignored, so a member is never left counted twice or with a stale degree.
-- KEYS: the industry's zset (member -> degree), its connection sum, its versions hash.
-- ARGV[1]: JSON [[member, degree, version], ...] where degree -1 removes the member.
for _, entry in ipairs(cjson.decode(ARGV[1])) do
  local m, deg, version = entry[1], entry[2], entry[3]
  if version > tonumber(redis.call('HGET', KEYS[3], m) or '-1') then
    redis.call('HSET', KEYS[3], m, version)
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
end
return 0
