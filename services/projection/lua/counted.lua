-- Record where a member is counted (`ci`), only by the writer holding the member's current
-- change count: a stalled replica's older snapshot cannot move it back.
-- KEYS: the member's profile hash, its change count (same hash tag). ARGV: industry now
-- ('' = none), the change count the writer saw. Returns 1 if written.
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[2]) then return 0 end
if ARGV[1] == '' then
  redis.call('HDEL', KEYS[1], 'ci')
else
  redis.call('HSET', KEYS[1], 'ci', ARGV[1])
end
return 1
