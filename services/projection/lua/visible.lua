--! use steps
-- 1 when every one of these events is in the read model and so is what each awaits (an
-- accepted invitation awaits its connection's decision: marked 'w' until `settled`), else 0.
-- The marks of the live periods (steps.lua's marks_of), then the key per event that a build
-- before the periods wrote (named as a period's, with the event id in its place), so an
-- upgrade does not keep a `?after=` client waiting.
-- KEYS[1]: the keyspace's positions hash (for routing; the marks share its `{g}` tag);
-- ARGV[1] prefix, ARGV[2] JSON ids, ARGV[3] the marks' period.
local ns, ids, period = ARGV[1], cjson.decode(ARGV[2]), tonumber(ARGV[3])
local marks, settled = marks_of(ns, 'seen', ids, period), marks_of(ns, 'settled', ids, period)
for _, eid in ipairs(ids) do
  local mark = marks[eid] or call('GET', marks_key(ns, 'seen', eid))
  if mark ~= '1' then
    if mark ~= 'w' then return 0 end
    if not settled[eid] and call('EXISTS', marks_key(ns, 'settled', eid)) == 0 then return 0 end
  end
end
return 1
