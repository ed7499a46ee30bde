--! use steps
-- Which of these events are applied already (their marks share the `{g}` tag with KEYS[1]).
-- KEYS[1]: the keyspace's positions hash (for routing); ARGV[1] prefix, ARGV[2] JSON ids,
-- ARGV[3] the marks' period (steps.lua's marks_key).
return applied_before(ARGV[1], cjson.decode(ARGV[2]), tonumber(ARGV[3]))
