-- POST /invitations/{id}/accept by the recipient, each pending invitation of WRK_ACCEPTS
-- (lines "invitation_id recipient") once; past the end of the list they repeat (409).
package.path = os.getenv("WRK_DIR") .. "/?.lua;" .. package.path
require("common")
local next_pending

function init(args)
  next_pending = cycle_pairs("WRK_ACCEPTS")
end

request = function()
  local item = next_pending()
  return wrk.format("POST", "/invitations/" .. item[1] .. "/accept", headers_for(item[2]), "")
end
