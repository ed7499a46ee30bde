--! use counting
-- Graph steps on one node of a Redis Cluster, over the members that node holds. On a cluster
-- the projection's graph queries scatter and gather (ReadModelStore.on_nodes): one call per
-- node, with the other side's members sent as an argument once per node, and a small answer
-- back (which members, or a few scores), never a connection set.
-- The script has no shebang line, so it may touch keys of several slots as long as this node
-- serves them all (Redis refuses any other key); KEYS[1], one of them, routes the call.
-- ARGV: keyspace prefix, step, the step's parameter, how many members follow, the members,
-- then `others`.
local ns, step, param, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local call = redis.call

local function k(kind, m) return ns .. kind .. ':{' .. m .. '}' end

-- Tables from ARGV by loop: `unpack` stops at 8,000 values and `others` may hold 30,000.
local members, others, wanted = {}, {}, {}
for i = 5, 4 + n do members[#members + 1] = ARGV[i] end
for i = 5 + n, #ARGV do
  others[#others + 1] = ARGV[i]
  wanted[ARGV[i]] = true
end

-- The members of `others` that x's connection set holds, in member order (at most `most`):
-- walks the smaller side, x's set through a table or `others` through SMISMEMBER.
local function held(x, most)
  local key, found = k('c', x), {}
  if call('SCARD', key) <= #others then
    for _, y in ipairs(call('SMEMBERS', key)) do
      if wanted[y] then found[#found + 1] = y end
    end
    table.sort(found)
  else
    for start = 1, #others, 5000 do
      local part = {}
      for i = start, math.min(start + 4999, #others) do part[#part + 1] = others[i] end
      local flags = call('SMISMEMBER', key, unpack(part))
      for i, flag in ipairs(flags) do
        if flag == 1 then found[#found + 1] = part[i] end
      end
      if most == 1 and #found > 0 then break end  -- a hit is all `touching` asks
    end
    table.sort(found)
  end
  local out = {}
  for i = 1, math.min(most, #found) do out[i] = found[i] end
  return out
end

if step == 'touching' then
  -- the members whose connections hold one of `others` at least
  local out = {}
  for _, x in ipairs(members) do
    if #held(x, 1) > 0 then out[#out + 1] = x end
  end
  return out
elseif step == 'common' then
  -- members = {t}: the members of `others` that t is connected to, in member order
  return held(members[1], #others)
elseif step == 'pairs' then
  -- for each member x (in member order), {x, the members of `others` x is connected to, the
  -- stored engagement score of each of those connections}; at most `param` in all
  local cap, total, out = tonumber(param), 0, {}
  table.sort(members)
  for _, x in ipairs(members) do
    if total >= cap then break end
    local ys = held(x, cap - total)
    if #ys > 0 then
      local scores = {}
      for start = 1, #ys, 5000 do
        local got = call('HMGET', k('es', x), unpack(ys, start, math.min(start + 4999, #ys)))
        for i, score in ipairs(got) do scores[start + i - 1] = score end
      end
      for i = 1, #ys do scores[i] = scores[i] or '0' end
      out[#out + 1] = {x, ys, scores}
      total = total + #ys
    end
  end
  return out
elseif step == 'sizes' then
  -- {member, the size of its connection set} for each member
  local out = {}
  for i, x in ipairs(members) do out[i] = {x, call('SCARD', k('c', x))} end
  return out
elseif step == 'count' then
  -- the members' connection sets summed, leaving out `others`: a flat {member, count, ...}
  local counts, seen = count_sets(function(x) return k('c', x) end, members, wanted)
  local out = {}
  for _, y in ipairs(seen) do out[#out + 1] = y; out[#out + 1] = counts[y] end
  return out
elseif step == 'overlap' then
  -- {member, how many of `others` its connections hold} for each member
  local out = {}
  for i, x in ipairs(members) do out[i] = {x, #held(x, #others)} end
  return out
elseif step == 'after' then
  -- param `want:cursor`: {the first `want` members after `cursor`, in member order, that
  -- the members' connections hold, leaving out `others`; 1 if more follow, else 0}
  local want, cursor = string.match(param, '^(%d+):(.*)$')
  want = tonumber(want)
  local found, list = {}, {}
  for _, x in ipairs(members) do
    for _, y in ipairs(call('SMEMBERS', k('c', x))) do
      if y > cursor and not wanted[y] and not found[y] then
        found[y] = true
        list[#list + 1] = y
      end
    end
  end
  table.sort(list)
  local out = {}
  for i = 1, math.min(want, #list) do out[i] = list[i] end
  return {out, #list > want and 1 or 0}
elseif step == 'matching' then
  -- others = the grouping keys wanted of industry, location, employer, and a title part
  -- ('' for any): the active members whose profile matches, as graph.lua's network reads it
  local out = {}
  for _, x in ipairs(members) do
    local p = call('HMGET', k('m', x), 'active', 'ki', 'kl', 'ke', 'kt')
    if p[1] == '1'
      and (others[1] == '' or p[2] == others[1])
      and (others[2] == '' or p[3] == others[2])
      and (others[3] == '' or p[4] == others[3])
      and (others[4] == '' or (p[5] and string.find(p[5], others[4], 1, true) ~= nil)) then
      out[#out + 1] = x
    end
  end
  return out
end
return redis.error_reply('unknown node step ' .. tostring(step))
