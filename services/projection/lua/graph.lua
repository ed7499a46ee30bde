--! use counting
-- The projection's graph queries, computed where the sets are: one call per query, small
-- arguments in, a small answer out; no connection set travels to the client.
-- ARGV[1]: keyspace prefix; ARGV[2]: the query; then the query's arguments (see each below).
-- Keys are computed here from the prefix and members (hash tag per member), so this script
-- serves a single node; on Redis Cluster the same queries scatter and gather (node.lua).
--
-- The viewer network cache: `n2:{v}` is a sorted set (all scores 0, so it reads in member
-- order) of v's 2nd-degree members, built by the background refresh for active viewers (a
-- set summed in slices, then one ZUNIONSTORE: warm_start, warm_sum, warm_keep; a request
-- never waits for a build), valid while neither v's nor
-- any 1st-degree connection's connection set changed since it was built (`cc:{m}`, set by
-- member.lua, against the build's `clock{g}`). Entries live within a byte budget, evicted
-- least recently used first (`n2lru{g}`); hits, misses, builds and bytes in `n2stats{g}`.
-- Without a valid entry, badges meet in the middle per id and search scans members in order.
-- A function library (shared/scripts.py loads it once): everything below is defined at
-- load time, so a call runs only its query, not 600 lines of definitions (an EVALSHA would
-- run them all on every call). `run`, the entry point, sets the call's prefix and arguments
-- in these upvalues first.
local ns, query, ARGV
local call  -- redis.call, which a library may not touch while it loads

local function k(kind, m) return ns .. kind .. ':{' .. m .. '}' end
local LRU, STATS, CLOCK

local function blocked_either(a, b)
  return call('SISMEMBER', k('bl', a), b) == 1 or call('SISMEMBER', k('blby', a), b) == 1
end

-- Members v must not be offered: blocked either way, or in a pending invitation either way.
local function excluded(v)
  local out = {}
  for _, s in ipairs({'bl', 'blby'}) do
    for _, x in ipairs(call('SMEMBERS', k(s, v))) do out[x] = true end
  end
  for _, s in ipairs({'ir', 'is'}) do
    for _, val in ipairs(call('HVALS', k(s, v))) do out[string.match(val, '^([^|]*)')] = true end
  end
  return out
end

local function now_ms()
  local t = call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The viewer asked: the background refresh keeps their network and suggestions (seconds,
-- as queries/suggestions.py reads them).
local function mark_active(v)
  call('ZADD', ns .. 'sgactive{g}', now_ms() / 1000, v)
end

-- viewer network cache ------------------------------------------------------------------
local function cache_valid(v)
  local built = call('HGET', k('n2m', v), 'clock')
  if not built then return false end
  built = tonumber(built)
  if tonumber(call('GET', k('cc', v)) or '0') > built then return false end
  for _, x in ipairs(call('SMEMBERS', k('c', v))) do
    if tonumber(call('GET', k('cc', x)) or '0') > built then return false end
  end
  return true
end

local function evict(budget)
  local total = tonumber(call('HGET', STATS, 'bytes') or '0')
  while total > budget do
    local oldest = call('ZRANGE', LRU, 0, 0)
    if #oldest == 0 then break end
    local v = oldest[1]
    local bytes = tonumber(call('HGET', k('n2m', v), 'bytes') or '0')
    call('DEL', k('n2', v), k('n2m', v))
    call('ZREM', LRU, v)
    total = call('HINCRBY', STATS, 'bytes', -bytes)
    call('HINCRBY', STATS, 'evictions', 1)
  end
end

-- Add connections' sets to the set `key`, 5,000 members per SADD: each entry costs one
-- lookup, where a ZUNIONSTORE into a growing sorted set would copy all of it every slice.
local function add_sets(key, conns)
  for _, x in ipairs(conns) do
    local members = call('SMEMBERS', k('c', x))
    for start = 1, #members, 5000 do
      call('SADD', key, unpack(members, start, math.min(start + 4999, #members)))
    end
  end
end

-- Each connection with the size of its set, for work done in slices.
local function with_sizes(conns)
  local out = {}
  for i, x in ipairs(conns) do out[i] = {x, call('SCARD', k('c', x))} end
  return out
end

-- Make the union `built` (of v's connections' sets, as the clock read `clock`) v's network
-- cache: in place of the old one at once, without v and v's connections.
local function keep_network(v, built, clock, budget)
  local key, meta = k('n2', v), k('n2m', v)
  local old = tonumber(call('HGET', meta, 'bytes') or '0')
  call('SREM', built, v)
  call('SDIFFSTORE', built, built, k('c', v))
  -- A sorted set, all scores 0, reads in member order (search pages by cursor); replaces
  -- the old one at once (an empty union stores nothing, which deletes it).
  call('ZUNIONSTORE', key, 1, built, 'WEIGHTS', 0)
  call('DEL', built)
  local bytes = call('ZCARD', key) * 64 + 200  -- an estimate; MEMORY USAGE samples anyway
  call('HSET', meta, 'clock', clock, 'bytes', bytes)
  call('HINCRBY', STATS, 'bytes', bytes - old)
  call('HINCRBY', STATS, 'builds', 1)
  call('ZADD', LRU, now_ms(), v)
  evict(budget)
  return key
end

-- Put `entry` in `top`, the best `n` so far, best first by `before` (short lists: an
-- insertion; callers check first whether it can place at all, where that is cheaper).
local function keep_best(top, n, entry, before)
  local at = #top + 1
  while at > 1 and before(entry, top[at - 1]) do top[at] = top[at - 1]; at = at - 1 end
  top[at] = entry
  if #top > n then top[#top] = nil end
end

local function less(p, q) return p < q end

-- The `n` smallest of `bucket`, in order: one pass keeping a short sorted list (a count's
-- bucket or a mutual list holds thousands, of which a page takes a few dozen; sorting it all
-- costs more).
local function smallest(bucket, n)
  local top = {}
  if n < 1 then return top end
  for _, x in ipairs(bucket) do
    if #top < n or x < top[#top] then keep_best(top, n, x, less) end
  end
  return top
end

-- degree a b sample: {degree (-1: none or blocked), mutual count, mutual sample} -----------
local function degree(a, b, sample)
  if a == b then return {0, 0, {}} end
  if blocked_either(a, b) then return {-1, 0, {}} end
  local ca, cb = k('c', a), k('c', b)
  local mutual = call('SINTER', ca, cb)
  if call('SISMEMBER', ca, b) == 1 then return {1, #mutual, smallest(mutual, sample)} end
  if #mutual > 0 then return {2, #mutual, smallest(mutual, sample)} end
  if cache_valid(a) then
    if call('ZINTERCARD', 2, k('n2', a), cb, 'LIMIT', 1) > 0 then return {3, 0, {}} end
    return {-1, 0, {}}
  end
  -- Meet in the middle from the smaller side: a neighbour of it that shares a connection
  -- with the other side makes the two three steps apart.
  local near, far = ca, cb
  if call('SCARD', ca) > call('SCARD', cb) then near, far = cb, ca end
  if call('SCARD', far) == 0 then return {-1, 0, {}} end
  for _, x in ipairs(call('SMEMBERS', near)) do
    if call('SINTERCARD', 2, k('c', x), far, 'LIMIT', 1) > 0 then return {3, 0, {}} end
  end
  return {-1, 0, {}}
end

-- badges v id...: {hit, degree per id (-1: none, blocked or unknown)}: from the cached
-- network when it is valid, else meet in the middle per id from the smaller side ----------
local function third_by_meeting(x, y)
  local cx, cy = k('c', x), k('c', y)
  local near, far = cx, cy
  if call('SCARD', cx) > call('SCARD', cy) then near, far = cy, cx end
  for _, z in ipairs(call('SMEMBERS', near)) do
    if call('SINTERCARD', 2, k('c', z), far, 'LIMIT', 1) > 0 then return true end
  end
  return false
end

local function badges(v, ids)
  local cached = cache_valid(v)
  local n2, cv = k('n2', v), k('c', v)
  local out = {}
  for i, x in ipairs(ids) do
    local d = -1
    if x == v then d = 0
    elseif blocked_either(v, x) then d = -1
    elseif call('SISMEMBER', cv, x) == 1 then d = 1
    elseif cached then
      if call('ZSCORE', n2, x) then d = 2
      elseif call('ZINTERCARD', 2, n2, k('c', x), 'LIMIT', 1) > 0 then d = 3 end
    elseif call('SINTERCARD', 2, cv, k('c', x), 'LIMIT', 1) > 0 then d = 2
    elseif third_by_meeting(v, x) then d = 3
    end
    out[i] = d
  end
  if cached then call('ZADD', LRU, now_ms(), v) end
  call('HINCRBY', STATS, cached and 'hits' or 'misses', 1)
  return {cached and 1 or 0, out}
end

-- paths a b limit cap: up to `limit` shortest paths (member lists), best engagement first --
local function pair_score(x, y)
  return tonumber(call('HGET', k('es', x), y) or '0')
end

-- The scores of x's connections to each of `ys`, in order: one HMGET per 5,000 (a walk
-- offers thousands of paths; a call per path was most of its time).
local function pair_scores(x, ys)
  local out, key = {}, k('es', x)
  for start = 1, #ys, 5000 do
    local got = call('HMGET', key, unpack(ys, start, math.min(start + 4999, #ys)))
    for i, v in ipairs(got) do out[start + i - 1] = tonumber(v or '0') end
  end
  return out
end

-- Paths rank by their score to 1e-6, so sums taken in another order tie the same way.
local function rounded(score) return math.floor(score * 1e6 + 0.5) / 1e6 end

-- Paths rank best first: by score, equal scores by their members joined with '>'.
-- Entries are {members, score, members joined}.
local function ranks_before(p, q)
  if p[2] ~= q[2] then return p[2] > q[2] end
  return p[3] < q[3]
end

-- Keep `path` among the best `limit` in `top`: one pass over what the walk offers, where
-- sorting thousands of paths by joined strings cost more than finding them.
local function offer(top, limit, path, score)
  local n = #top
  if n >= limit and score < top[n][2] then return end
  local entry = {path, score, table.concat(path, '>')}
  if n >= limit and not ranks_before(entry, top[n]) then return end
  keep_best(top, limit, entry, ranks_before)
end

local function paths(a, b, limit, cap)
  if a == b or blocked_either(a, b) then return {} end
  local ca, cb = k('c', a), k('c', b)
  if call('SISMEMBER', ca, b) == 1 then
    return {cjson.encode({{a, b}, rounded(pair_score(a, b))})}
  end
  local avoid = {}
  for _, s in ipairs({'bl', 'blby'}) do
    for _, m in ipairs({a, b}) do
      for _, x in ipairs(call('SMEMBERS', k(s, m))) do avoid[x] = true end
    end
  end
  local top, common = {}, {}
  for _, x in ipairs(call('SINTER', ca, cb)) do
    if not avoid[x] and #common < cap then common[#common + 1] = x end
  end
  if #common > 0 then
    local firsts = pair_scores(a, common)
    for i, x in ipairs(common) do
      offer(top, limit, {a, x, b}, rounded(firsts[i] + pair_score(x, b)))
    end
  else
    -- Three steps: walk out from the smaller side, meet the other side's connections.
    local from, to, flip = a, b, false
    if call('SCARD', ca) > call('SCARD', cb) then from, to, flip = b, a, true end
    local cto = k('c', to)
    local lasts = {}  -- y -> the score of y's connection to `to` (y recurs across x)
    local found = 0  -- paths offered: the first `cap` the walk meets are ranked
    for _, x in ipairs(call('SMEMBERS', k('c', from))) do
      if found >= cap then break end
      if not avoid[x] then
        local ys = {}
        for _, y in ipairs(call('SINTER', k('c', x), cto)) do
          if not avoid[y] and y ~= from then
            ys[#ys + 1] = y
            if found + #ys >= cap then break end
          end
        end
        if #ys > 0 then
          local first = pair_score(from, x)
          local middles = pair_scores(x, ys)
          for i, y in ipairs(ys) do
            local last = lasts[y]
            if last == nil then last = pair_score(y, to); lasts[y] = last end
            local score = rounded(first + middles[i] + last)
            local path = {from, x, y, to}
            if flip then path = {to, y, x, from} end
            offer(top, limit, path, score)
          end
          found = found + #ys
        end
      end
    end
  end
  local out = {}
  for i, entry in ipairs(top) do out[i] = cjson.encode({entry[1], entry[2]}) end
  return out
end

-- network v cursor limit cap degree industry location employer title: one page of v's 2nd
-- (or 3rd) degree in member order after `cursor`, filtered (profile keys `ki kl ke kt` are
-- grouping keys), skipping blocks and pending invitations either way and inactive members.
-- The 2nd degree reads the cached network when it is valid; else, and for the 3rd degree,
-- the active members (`members{g}`, in member order) are scanned, at most `cap` of them:
-- each is two steps away when its connections meet v's (one SINTERCARD), three when it is
-- neither nearer nor its connections' connections miss v's (the cached network's ZINTERCARD,
-- else meeting in the middle from the smaller side).
-- Returns {hit, ids, more, capped} ------------------------------------------------------------
local function network(v, cursor, limit, cap, degree, want)
  local cached = cache_valid(v)
  local n2, cv = k('n2', v), k('c', v)
  local from_cache = cached and degree == 2
  local source = from_cache and n2 or (ns .. 'members{g}')
  local function at_degree(x)
    if from_cache then return true end
    if call('SISMEMBER', cv, x) == 1 then return false end
    local second
    if cached then second = call('ZSCORE', n2, x) ~= false
    else second = call('SINTERCARD', 2, k('c', x), cv, 'LIMIT', 1) > 0 end
    if second or degree == 2 then return second and degree == 2 end
    if cached then return call('ZINTERCARD', 2, n2, k('c', x), 'LIMIT', 1) > 0 end
    return third_by_meeting(v, x)
  end
  local skip = excluded(v)
  skip[v] = true
  local start = '-'
  if cursor ~= '' then start = '(' .. cursor end
  local page, more, scanned, capped = {}, 0, 0, 0
  while more == 0 and capped == 0 do
    local chunk = call('ZRANGEBYLEX', source, start, '+', 'LIMIT', 0, 500)
    if #chunk == 0 then break end
    for _, x in ipairs(chunk) do
      if not from_cache and scanned >= cap then capped = 1; break end
      scanned = scanned + 1
      if not skip[x] then
        local p = call('HMGET', k('m', x), 'active', 'ki', 'kl', 'ke', 'kt')
        local ok = p[1] == '1'
          and (want[1] == '' or p[2] == want[1])
          and (want[2] == '' or p[3] == want[2])
          and (want[3] == '' or p[4] == want[3])
          and (want[4] == '' or (p[5] and string.find(p[5], want[4], 1, true) ~= nil))
        if ok and at_degree(x) then
          -- The page is full: this member says another page follows (so the last page is
          -- never empty).
          if #page == limit then more = 1; break end
          page[#page + 1] = x
        end
      end
      start = '(' .. x
    end
    if #chunk < 500 then break end
  end
  if cached then call('ZADD', LRU, now_ms(), v) end
  call('HINCRBY', STATS, cached and 'hits' or 'misses', 1)
  return {cached and 1 or 0, page, more, capped}
end

-- The `n` of v's connections v engaged with most, then those connected most recently (ties
-- by id). Only the engaged and the `n` most recent are sorted: a hub has 30,000.
local function most_engaged_and_recent(v, conns, n)
  local scores, since, times = {}, {}, {}
  local es, ca = call('HGETALL', k('es', v)), call('HGETALL', k('ca', v))
  for i = 1, #es, 2 do scores[es[i]] = tonumber(es[i + 1]) end
  for i = 1, #ca, 2 do since[ca[i]] = tonumber(ca[i + 1]) end
  for i, x in ipairs(conns) do times[i] = since[x] or 0 end
  table.sort(times)  -- numbers only: compared in C
  local cut = times[#times - n + 1]
  local picked = {}
  for _, x in ipairs(conns) do
    if (scores[x] or 0) > 0 or (since[x] or 0) >= cut then picked[#picked + 1] = x end
  end
  table.sort(picked, function(p, q)
    local sp, sq = scores[p] or 0, scores[q] or 0
    if sp ~= sq then return sp > sq end
    local tp, tq = since[p] or 0, since[q] or 0
    if tp ~= tq then return tp > tq end
    return p < q
  end)
  local kept = {}
  for i = 1, n do kept[i] = picked[i] end
  return kept
end

-- Members v must not be offered, as a set: v, v's connections, blocks and pending
-- invitations either way.
local function known_of(v)
  local known = excluded(v)
  known[v] = true
  for _, x in ipairs(call('SMEMBERS', k('c', v))) do known[x] = true end
  return known
end

-- An iterator over `members` by falling count: (member, count). The counts take few values,
-- so members go in buckets. With `wanted` (how many more the caller can take), a bucket goes
-- by id, only as far as the caller can take when it is reached; without it, in no set order:
-- for a caller whose answer does not depend on the order among equal counts.
local function falling(counts, members, wanted)
  local buckets, values = {}, {}
  for _, x in ipairs(members) do
    local n = counts[x]
    local bucket = buckets[n]
    if not bucket then bucket = {}; buckets[n] = bucket; values[#values + 1] = n end
    bucket[#bucket + 1] = x
  end
  table.sort(values, function(p, q) return p > q end)
  local vi, bi, bucket = 1, 0, nil
  return function()
    while vi <= #values do
      if not bucket then
        bucket = buckets[values[vi]]
        if wanted then
          local n = wanted()
          if n < #bucket then bucket = smallest(bucket, n) else table.sort(bucket) end
        end
      end
      bi = bi + 1
      if bi <= #bucket then return bucket[bi], values[vi] end
      vi, bi, bucket = vi + 1, 0, nil
    end
  end
end

-- The best `pool` by the estimate `counts` (fewer where counting them exactly would pass
-- `budget` lookups, never below `limit`; 0: no budget), counted exactly: SINTERCARD looks up
-- the smaller of the two sets. Returns their counts and the members.
local function count_pool(v, counts, seen, pool, limit, budget)
  local degree, spent, picked, exact = call('SCARD', k('c', v)), 0, {}, {}
  for x in falling(counts, seen, function() return pool - #picked end) do
    if #picked == pool then break end
    if budget > 0 then
      local cost = math.min(call('SCARD', k('c', x)), degree)
      if #picked >= limit and spent + cost > budget then break end
      spent = spent + cost
    end
    picked[#picked + 1] = x
    exact[x] = call('SINTERCARD', 2, k('c', x), k('c', v))
  end
  return exact, picked
end

-- v's list from exact `counts` of `members`: by falling count, each active one scored by
-- its boosts, until no later count can reach the list.
local function rank_counts(v, counts, members, limit, boosts)
  local me = call('HMGET', k('m', v), 'ki', 'ke', 'kl')
  -- The largest boost anyone can get: only for fields v has (a field v left empty is shared
  -- with no one), so a profile without them stops the scan at a higher count.
  local max_boost = 1
  for f = 1, 3 do
    if me[f] == '' then me[f] = false end
    if me[f] then max_boost = max_boost * boosts[f] end
  end
  -- best: entries {member, count, score, flags}, best first, at most `limit`
  local best, worst = {}, nil
  local function better(p, q)
    if p[3] ~= q[3] then return p[3] > q[3] end
    if p[2] ~= q[2] then return p[2] > q[2] end
    return p[1] < q[1]
  end
  for x, n in falling(counts, members) do
    if worst and n * max_boost < worst[3] then break end
    local p = call('HMGET', k('m', x), 'active', 'ki', 'ke', 'kl')
    if p[1] == '1' then
      local boost, flags = 1, 0
      if me[1] and p[2] == me[1] then boost = boost * boosts[1]; flags = flags + 1 end
      if me[2] and p[3] == me[2] then boost = boost * boosts[2]; flags = flags + 2 end
      if me[3] and p[4] == me[3] then boost = boost * boosts[3]; flags = flags + 4 end
      local entry = {x, n, n * boost, flags}
      if not worst or better(entry, worst) then
        keep_best(best, limit, entry, better)
        if #best == limit then worst = best[limit] end
      end
    end
  end
  local out = {}
  for i, e in ipairs(best) do out[i] = {e[1], e[2], tostring(e[3]), e[4]} end
  return out
end

-- The connections v's list starts from: all of them, or the `sample` v engaged with most,
-- then connected most recently, when v has more; and whether that left any out.
local function starting_set(v, sample)
  local conns = call('SMEMBERS', k('c', v))
  if #conns <= sample then return conns, false, #conns end
  return most_engaged_and_recent(v, conns, sample), true, #conns
end

-- suggest v sample pool limit boost_industry boost_employer boost_location reach: people v
-- may know, ranked as domain.rank_suggestions does (mutual connections times a boost for each
-- shared industry, employer, location; ties by mutual count, then id), without v, v's
-- connections, blocks and pending invitations either way, inactive members. Candidates are
-- read by falling mutual count and the scan stops once no later one can reach the list.
-- Bounded two ways (`sample` above the cap and `reach` 0 count exactly):
-- - a member with more than `sample` connections starts from `sample` of them (the most
--   engaged, then the most recent);
-- - of those, the connections' sets are summed smallest first, `reach` entries in all: the
--   members most of v's connections share turn up in the small sets too, while a hub's set
--   is mostly members it alone brings (one mutual connection each).
-- When either leaves sets out, the best `pool` by that estimate are counted exactly, within
-- 10 x `reach` lookups. A request for a member within the sample is this one call. A sampled
-- network and the background refresh take the same steps in slices, one short call each
-- (suggest_start, suggest_sum, suggest_pool, suggest_count, suggest_rank), so Redis never
-- stalls on a hub's list.
-- Returns {member, mutual count, score, shared-field flags (industry 1, employer 2,
-- location 4)} per entry, best first ----------------------------------------------------------
local function suggest(v, sample, pool, limit, boosts, reach)
  local conns, estimated = starting_set(v, sample)
  if reach > 0 then
    local sizes = {}
    for _, x in ipairs(conns) do sizes[x] = call('SCARD', k('c', x)) end
    table.sort(conns, function(p, q)
      if sizes[p] ~= sizes[q] then return sizes[p] < sizes[q] end
      return p < q
    end)
    local total, kept = 0, {}
    for _, x in ipairs(conns) do
      if #kept > 0 and total + sizes[x] > reach then estimated = true; break end
      total = total + sizes[x]; kept[#kept + 1] = x
    end
    conns = kept
  end
  local counts, seen = count_sets(function(x) return k('c', x) end, conns, known_of(v))
  if estimated then counts, seen = count_pool(v, counts, seen, pool, limit, 10 * reach) end
  return rank_counts(v, counts, seen, limit, boosts)
end

-- suggest_start v sample: {1 if the start leaves connections out else 0, [[connection,
-- size of its set]]} (the background refresh sums them in slices) --------------------------
local function suggest_start(v, sample)
  local conns, estimated = starting_set(v, sample)
  return {estimated and 1 or 0, with_sizes(conns)}
end

-- suggest_sum tmp ttl_ms member...: add these connections' sets into the estimate `tmp` ----
-- A field longer than hash-max-listpack-value: the sums' hash is a hashtable from its first
-- write (a listpack, up to 4,096 entries with REDIS_TUNING, costs O(n) per new field).
local WIDE = '~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~'  -- 65 (no `string` while a library loads)

local function suggest_sum(tmp, ttl, conns)
  -- A hash of counts: a sorted set would be rebuilt whole by every slice's ZUNIONSTORE.
  call('HSETNX', tmp, WIDE, 0)
  local counts, seen = {}, {}
  for _, x in ipairs(conns) do
    for _, y in ipairs(call('SMEMBERS', k('c', x))) do
      local n = counts[y]
      if n then counts[y] = n + 1 else counts[y] = 1; seen[#seen + 1] = y end
    end
  end
  for start = 1, #seen, 2000 do
    local part = {unpack(seen, start, math.min(start + 1999, #seen))}
    local before = call('HMGET', tmp, unpack(part))
    local args = {'HSET', tmp}
    for i, y in ipairs(part) do
      args[#args + 1] = y
      args[#args + 1] = counts[y] + (tonumber(before[i]) or 0)
    end
    call(unpack(args))
  end
  call('PEXPIRE', tmp, ttl)  -- a refresh that stopped half way leaves nothing for long
  return 1
end

-- suggest_pool v tmp counted ttl_ms estimated pool limit boosts...: from the summed counts
-- `tmp` (deleted), without v, v's connections, blocks and pending invitations:
-- - `estimated` (some sets left out): the best `pool` others by count (ties by id), each
--   with the cost of counting it exactly (suggest_count puts them in `counted`);
-- - else the counts are exact: into `counted` go those that can still make the list (at
--   least the `limit`-th active member's count over the largest boost), and nothing returns.
local function suggest_pool(v, tmp, counted, ttl, estimated, pool, limit, boosts)
  local known = known_of(v)
  known[WIDE] = true
  local flat = call('HGETALL', tmp)
  call('DEL', tmp)
  local counts, members = {}, {}
  for i = 1, #flat, 2 do
    if not known[flat[i]] then
      counts[flat[i]] = tonumber(flat[i + 1])
      members[#members + 1] = flat[i]
    end
  end
  local out = {}
  if estimated then
    local degree = call('SCARD', k('c', v))
    for x in falling(counts, members, function() return pool - #out end) do
      if #out == pool then break end
      out[#out + 1] = {x, math.min(call('SCARD', k('c', x)), degree)}
    end
    return out
  end
  local active, floor = 0, 0
  for x, n in falling(counts, members) do
    if call('HGET', k('m', x), 'active') == '1' then active = active + 1 end
    if active == limit then floor = n / (boosts[1] * boosts[2] * boosts[3]); break end
  end
  local args = {}
  local function flush()
    if #args > 0 then call('HSET', counted, unpack(args)); args = {} end
  end
  for _, x in ipairs(members) do
    if counts[x] >= floor then
      args[#args + 1] = x; args[#args + 1] = counts[x]
      if #args >= 4000 then flush() end
    end
  end
  flush()
  call('PEXPIRE', counted, ttl)
  return out
end

-- v's network cache is built in slices, one short call each (a hub's network is millions of
-- entries, one call would hold Redis for a second). warm_start v: false while v's cache is
-- valid, else {the clock now,
-- [[connection, size of its set]]}; warm_sum tmp ttl_ms member...: add these sets into the
-- union `tmp`; warm_keep v tmp clock budget: make it v's cache (changes after `clock` leave
-- it stale, so the next refresh builds it again) -------------------------------------------
local function warm_start(v)
  if cache_valid(v) then return false end
  return {call('GET', CLOCK) or '0', with_sizes(call('SMEMBERS', k('c', v)))}
end

-- suggestions_read v: {v's precomputed list (JSON, as stored), the members of it that are now
-- connected, blocked either way or in a pending invitation either way}; false when none -----
local function suggestions_read(v)
  local raw = call('GET', k('sg', v))
  if not raw then return false end
  local skip = excluded(v)
  local gone = {}
  for _, item in ipairs(cjson.decode(raw)['items']) do
    local x = item['member_id']
    if skip[x] or call('SISMEMBER', k('c', v), x) == 1 then gone[#gone + 1] = x end
  end
  return {raw, gone}
end

-- suggestions v want sample pool limit boosts... reach: v's list as a request finds it, in one
-- call where it can be: {1, the precomputed list, its members gone since} when one holds at
-- least `want` entries; {2} when v has more than `sample` connections (computed in slices);
-- else {3, the clock, ranked as `suggest` ranks them, {name, headline} of each} -----------
local function suggestions(v, want, sample, pool, limit, boosts, reach)
  local cached = suggestions_read(v)
  if cached and cjson.decode(cached[1])['limit'] >= want then return {1, cached[1], cached[2]} end
  if call('SCARD', k('c', v)) > sample then return {2} end
  local clock = call('GET', CLOCK) or '0'
  local ranked = suggest(v, sample, pool, limit, boosts, reach)
  local profiles = {}
  for i, e in ipairs(ranked) do profiles[i] = call('HMGET', k('m', e[1]), 'name', 'headline') end
  return {3, clock, ranked, profiles}
end

-- fresh v clock: neither v nor any of v's connections changed after `clock` (the later of
-- lc:{m}, any other change, and cc:{m}, connections) --------------------------------------
local function changed_after(x, clock)
  local marks = call('MGET', k('lc', x), k('cc', x))
  return tonumber(marks[1] or '0') > clock or tonumber(marks[2] or '0') > clock
end
local function fresh(v, clock)
  if changed_after(v, clock) then return 0 end
  for _, x in ipairs(call('SMEMBERS', k('c', v))) do
    if changed_after(x, clock) then return 0 end
  end
  return 1
end

-- mutual a b cursor limit: {count, the first `limit` common connections after `cursor`}
-- (none across a block either way) -----------------------------------------------------
local function mutual(a, b, cursor, limit)
  if blocked_either(a, b) then return {0, {}, 0} end  -- as for a member that does not exist
  local common = call('SINTER', k('c', a), k('c', b))
  local after = {}
  for _, x in ipairs(common) do
    if cursor == '' or x > cursor then after[#after + 1] = x end
  end
  return {#common, smallest(after, limit), (#after > limit) and 1 or 0}
end

local function run(_, args)
  call, ARGV, ns, query = redis.call, args, args[1], args[2]
  LRU, STATS, CLOCK = ns .. 'n2lru{g}', ns .. 'n2stats{g}', ns .. 'clock{g}'
  if query == 'degree' then
    return degree(ARGV[3], ARGV[4], tonumber(ARGV[5]))
  elseif query == 'badges' then
    mark_active(ARGV[3])
    local ids = {}
    for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
    return badges(ARGV[3], ids)
  elseif query == 'paths' then
    return paths(ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
  elseif query == 'network' then
    mark_active(ARGV[3])
    return network(ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]),
                   {ARGV[8], ARGV[9], ARGV[10], ARGV[11]})
  elseif query == 'warm_start' then
    return warm_start(ARGV[3])
  elseif query == 'warm_sum' then
    add_sets(ARGV[3], {unpack(ARGV, 5)})
    call('PEXPIRE', ARGV[3], tonumber(ARGV[4]))  -- a refresh that stopped half way
    return 1
  elseif query == 'warm_keep' then
    keep_network(ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]))
    return 1
  elseif query == 'suggestions_read' then
    mark_active(ARGV[3])
    return suggestions_read(ARGV[3])
  elseif query == 'suggestions' then
    mark_active(ARGV[3])
    return suggestions(ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
                       tonumber(ARGV[7]), {tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])},
                       tonumber(ARGV[11]))
  elseif query == 'suggest' then
    return suggest(ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
                   {tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])}, tonumber(ARGV[10]))
  elseif query == 'suggest_start' then
    return suggest_start(ARGV[3], tonumber(ARGV[4]))
  elseif query == 'suggest_sum' then
    return suggest_sum(ARGV[3], tonumber(ARGV[4]), {unpack(ARGV, 5)})
  elseif query == 'suggest_pool' then
    return suggest_pool(ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7] == '1',
                        tonumber(ARGV[8]), tonumber(ARGV[9]),
                        {tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])})
  elseif query == 'suggest_count' then
    -- suggest_count v counted ttl_ms member...: their exact mutual counts with v, into the
    -- hash `counted`
    local v, counted, args = ARGV[3], ARGV[4], {'HSET', ARGV[4]}
    for i = 6, #ARGV do
      args[#args + 1] = ARGV[i]
      args[#args + 1] = call('SINTERCARD', 2, k('c', ARGV[i]), k('c', v))
    end
    if #args > 2 then call(unpack(args)) end
    call('PEXPIRE', counted, tonumber(ARGV[5]))
    return 1
  elseif query == 'suggest_rank' then
    -- suggest_rank v counted limit boosts...: v's list from the exact counts `counted`
    -- (deleted)
    local flat = call('HGETALL', ARGV[4])
    call('DEL', ARGV[4])
    local counts, members = {}, {}
    for i = 1, #flat, 2 do
      counts[flat[i]] = tonumber(flat[i + 1])
      members[#members + 1] = flat[i]
    end
    return rank_counts(ARGV[3], counts, members, tonumber(ARGV[5]),
                       {tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])})
  elseif query == 'fresh' then
    return fresh(ARGV[3], tonumber(ARGV[4]))
  elseif query == 'mutual' then
    return mutual(ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]))
  end
  return redis.error_reply('unknown graph query ' .. tostring(query))
end

redis.register_function(FUNCTION_NAME, run)  -- FUNCTION_NAME: put before by shared/scripts.py
