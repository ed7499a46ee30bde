-- Which of these events are applied already (their marks share the `{g}` tag with KEYS[1]).
-- KEYS[1]: the keyspace's positions hash (for routing); ARGV[1] prefix, ARGV[2] JSON ids.
local out = {}
for i, eid in ipairs(cjson.decode(ARGV[2])) do
  out[i] = redis.call('EXISTS', ARGV[1] .. 'seen{g}:' .. eid)
end
return out
