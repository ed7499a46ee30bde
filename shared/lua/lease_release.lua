-- Give a lease up, only if still held: KEYS[1] lease key, ARGV[1] owner. 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
