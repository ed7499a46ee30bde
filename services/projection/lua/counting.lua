-- Connection sets summed in a Lua table, for graph.lua (one node) and node.lua (one node of
-- a cluster). A sorted set would cost a skiplist insert per member, and freeing it after.
-- `key(x)`: the key of x's connection set; `known`: members to leave out. Returns
-- {member = count} and the members in the order first seen.
local function count_sets(key, conns, known)
  local counts, seen = {}, {}
  for _, x in ipairs(conns) do
    for _, y in ipairs(redis.call('SMEMBERS', key(x))) do
      if not known[y] then
        local n = counts[y]
        if n then counts[y] = n + 1 else counts[y] = 1; seen[#seen + 1] = y end
      end
    end
  end
  return counts, seen
end
