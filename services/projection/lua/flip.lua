-- Flip readers to a rebuilt version, only forward and only by the rebuild holding the lock.
-- KEYS[1] current version key, KEYS[2] rebuild lock (same slot); ARGV[1] version, ARGV[2] owner.
-- 1 flipped; 0 a version as new or newer is current already; -1 the lock was lost.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
local current = tonumber(redis.call('GET', KEYS[1]) or '1')
if current >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
