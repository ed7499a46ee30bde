-- GET the projection's member views listed in WRK_PATHS (lines "member path"), in order,
-- as that member; past the end of the list they repeat. One connection measures latency.
package.path = os.getenv("WRK_DIR") .. "/?.lua;" .. package.path
require("common")
local reads = {}
local next_index = 1

function init(args)
  for line in io.lines(os.getenv("WRK_PATHS")) do
    local member, path = line:match("(%S+) (%S+)")
    table.insert(reads, {member, path})
  end
end

request = function()
  local item = reads[next_index]
  next_index = next_index % #reads + 1
  return wrk.format("GET", item[2], headers_for(item[1]), nil)
end
