--! use steps
-- Set members' counted degree in ONE industry (its keys share the industry's hash tag).
-- KEYS: the industry's zset (member -> degree), its connection sum, its versions hash.
-- ARGV[1]: JSON [[member, degree, version], ...] where degree -1 removes the member.
apply_industry(KEYS[1], KEYS[2], KEYS[3], cjson.decode(ARGV[1]))
return 0
