-- wrk script: POST /v1/events with 100 NDJSON events of 100-byte payloads per request.
-- wrk -t1 -c32 -d10s -s benches/http/ndjson.lua http://127.0.0.1:7080/v1/events
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-ndjson"
local lines = {}
for i = 1, 100 do
  lines[#lines + 1] = '{"payload":"' .. string.rep("x", 100) .. '"}'
end
wrk.body = table.concat(lines, "\n") .. "\n"

-- Any answer but 200 is counted apart (wrk reports "Non-2xx or 3xx responses").
