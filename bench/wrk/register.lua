-- POST /members: each request registers a new member (the acting member registers itself).
package.path = os.getenv("WRK_DIR") .. "/?.lua;" .. package.path
require("common")
local run = os.getenv("WRK_PREFIX")
local counter = 0
local tag = ""

function init(args)
  seed_random()
  tag = string.format("%05d", math.random(0, 99999))
end

request = function()
  counter = counter + 1
  local id = string.format("%s%s%07d", run, tag, counter)
  local body = string.format('{"name":"Member %s","industry":"Technology"}', id)
  return wrk.format("POST", "/members", headers_for(id), body)
end
