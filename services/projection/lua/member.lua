--! use steps
-- Apply one batch's effects, member by member (steps.lua). Every key touched for a member
-- carries that member's hash tag: on Redis Cluster the caller sends one member per call
-- (KEYS[1] routes it to the member's slot).
-- KEYS: the members' profile keys. ARGV: keyspace prefix, JSON [[member, ops], ...] with
-- ops [[event_id, ts, source partition, offset, kind, args...], ...], clock, dedupe TTL,
-- '1' to only check the types of the keys the ops touch (all or nothing: the caller checks
-- every member of a chunk before any call writes).
-- Returns per member {counted industry or '', industry now (if active) or '', degree,
-- change count}, or 'ok' in check mode.
local ns, batch = ARGV[1], cjson.decode(ARGV[2])
if ARGV[5] == '1' then return check_members(ns, batch) or 'ok' end
return apply_members(ns, batch, ARGV[3], tonumber(ARGV[4]))
