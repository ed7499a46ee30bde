-- POST WRK_PATH with the body WRK_BODY (a format with one %s: the other member): a random
-- member acting towards a random other one (common.lua's `random_pair`); an invitation or
-- an engagement.
package.path = os.getenv("WRK_DIR") .. "/?.lua;" .. package.path
require("common")
local path, body = os.getenv("WRK_PATH"), os.getenv("WRK_BODY")

init = seed_random

request = function()
  local actor, other = random_pair()
  return wrk.format("POST", path, headers_for(actor), string.format(body, other))
end
