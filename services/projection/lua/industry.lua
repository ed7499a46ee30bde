--! use steps
-- Set members' counted degree in ONE industry (its keys share the industry's hash tag).
-- KEYS: the industry's histogram (degree -> members), its degrees' sum, its versions hash,
-- its degrees hash (member -> counted degree), and its sorted set of the layout before the
-- histogram (upgraded when found). ARGV[1]: JSON [[member, degree, version], ...] where
-- degree -1 removes the member.
apply_industry(KEYS[5], KEYS[1], KEYS[2], KEYS[3], KEYS[4], cjson.decode(ARGV[1]))
return 0
