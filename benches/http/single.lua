-- wrk script: POST /v1/events with one JSON event of a 100-byte payload per request.
-- wrk -t1 -c64 -d10s -s benches/http/single.lua http://127.0.0.1:7080/v1/events
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"payload":"' .. string.rep("x", 100) .. '"}'
