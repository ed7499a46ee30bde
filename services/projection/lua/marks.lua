--! use steps
-- Close a batch (steps.lua's mark_events and close_batch), after the per-member and
-- per-industry scripts succeeded, on keys that share the `{g}` hash tag. KEYS: positions
-- hash, stats hash. ARGV: keyspace prefix, JSON [[event_id, ts, awaits_decision, settles],
-- ...], JSON {"topic:partition": offset}, dedupe TTL, JSON [topic:partition whose position
-- may go back], the marks' period (steps.lua's marks_key), this build's read-model format.
claim_format(ARGV[1], KEYS[2], ARGV[7])
local marked = mark_events(ARGV[1], cjson.decode(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[6]))
return close_batch(KEYS[1], KEYS[2], marked, cjson.decode(ARGV[3]), cjson.decode(ARGV[5]))
