-- Shared by the bench's wrk scripts: status counts per thread, one JSON line at the end.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

statuses = {}

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p99_ms": %.3f, ' ..
    '"errors": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    table.concat(parts, ", ")))
end

token = os.getenv("WRK_TOKEN")

-- Each wrk thread its own random sequence.
function seed_random()
  math.randomseed(os.time() * 1000 + math.floor(os.clock() * 1e6))
end

function headers_for(member)
  return {
    ["Authorization"] = "Bearer " .. token,
    ["X-Member-Id"] = member,
    ["Content-Type"] = "application/json",
  }
end

-- Two different random members among WRK_MEMBERS registered ones named
-- <WRK_PREFIX><index, 6 digits>: the acting one and the other.
local members, prefix = tonumber(os.getenv("WRK_MEMBERS") or "2"), os.getenv("WRK_PREFIX")
function random_pair()
  local a = math.random(0, members - 1)
  local b = math.random(0, members - 2)
  if b >= a then b = b + 1 end
  return string.format("%s%06d", prefix, a), string.format("%s%06d", prefix, b)
end

-- The lines "a b" of the file named by the environment variable `env`, handed out as {a, b}
-- in order by the function returned, round and round.
function cycle_pairs(env)
  local items = {}
  for line in io.lines(os.getenv(env)) do
    local a, b = line:match("(%S+) (%S+)")
    table.insert(items, {a, b})
  end
  local i = 0
  return function()
    i = i % #items + 1
    return items[i]
  end
end
