-- Load a command's slice as one snapshot: aggregates, set-membership checks, and aggregates
-- whose id is a field of a loaded one (`follows`), so a command needs one round trip.
-- KEYS: aggregate hashes..., check sets...
-- ARGV: n_aggregates, n_checks, n_follows, check members...,
--       (source index (1-based into the aggregates), JSON field, key prefix) per follow
-- Returns {{v, s} per aggregate, 0|1 per check, {id or false, v, s} per follow}.
-- A followed key is computed here, so this script runs on one node (not on a cluster).
local n_agg, n_chk, n_fol = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 1, n_agg do out[i] = redis.call('HMGET', KEYS[i], 'v', 's') end
for j = 1, n_chk do out[n_agg + j] = redis.call('SISMEMBER', KEYS[n_agg + j], ARGV[3 + j]) end
local base = 3 + n_chk
for f = 0, n_fol - 1 do
  local src = tonumber(ARGV[base + 3 * f + 1])
  local field, prefix = ARGV[base + 3 * f + 2], ARGV[base + 3 * f + 3]
  local entry = {false, false, false}
  local raw = out[src][2]
  if raw then
    local id = cjson.decode(raw)[field]
    if type(id) == 'string' then
      local row = redis.call('HMGET', prefix .. id, 'v', 's')
      entry = {id, row[1], row[2]}
    end
  end
  out[n_agg + n_chk + f + 1] = entry
end
return out
