-- GET the projection's member views listed in WRK_PATHS (lines "member path"), in order,
-- as that member; past the end of the list they repeat. One connection measures latency.
package.path = os.getenv("WRK_DIR") .. "/?.lua;" .. package.path
require("common")
local next_read

function init(args)
  next_read = cycle_pairs("WRK_PATHS")
end

request = function()
  local item = next_read()
  return wrk.format("GET", item[2], headers_for(item[1]), nil)
end
