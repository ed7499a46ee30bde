-- Take or renew a lease: KEYS[1] lease key, ARGV[1] owner, ARGV[2] lease ms. 1 if held.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
