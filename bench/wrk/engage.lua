-- POST /engagements: a random actor likes something of a random other member among
-- WRK_MEMBERS registered members named <WRK_PREFIX><index, 6 digits>.
package.path = os.getenv("WRK_DIR") .. "/?.lua;" .. package.path
require("common")
local members = tonumber(os.getenv("WRK_MEMBERS"))
local prefix = os.getenv("WRK_PREFIX")

function init(args)
  math.randomseed(os.time() * 1000 + math.floor(os.clock() * 1e6))
end

request = function()
  local a = math.random(0, members - 1)
  local b = math.random(0, members - 2)
  if b >= a then b = b + 1 end
  local body = string.format('{"target":"%s%06d","kind":"like"}', prefix, b)
  return wrk.format("POST", "/engagements", headers_for(string.format("%s%06d", prefix, a)), body)
end
