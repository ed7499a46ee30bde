-- POST /invitations/{id}/accept by the recipient, each pending invitation of WRK_ACCEPTS
-- (lines "invitation_id recipient") once; past the end of the list they repeat (409).
package.path = os.getenv("WRK_DIR") .. "/?.lua;" .. package.path
require("common")
local pending = {}
local next_index = 1

function init(args)
  for line in io.lines(os.getenv("WRK_ACCEPTS")) do
    local id, recipient = line:match("(%S+) (%S+)")
    table.insert(pending, {id, recipient})
  end
end

request = function()
  local item = pending[next_index]
  next_index = next_index % #pending + 1
  return wrk.format("POST", "/invitations/" .. item[1] .. "/accept", headers_for(item[2]), "")
end
