-- Memory mode: cycle through all scenario requests (task endpoints included,
-- except the 50 ms /task-slow).  Usage:
--   wrk ... -s mixed.lua http://127.0.0.1:PORT -- LIMIT
-- After LIMIT responses the thread stops and prints "LIMIT_REACHED" on
-- stderr; bench/run.py then sends SIGINT so that wrk prints its summary.
local json = "application/json"
local reqs = {}
local n = 0
local i = 0
local done = 0
local limit = 0
local bad = 0
local stopped = false

-- Built in init(): wrk only sets the Host header right before calling it.
local function build()
  return {
    wrk.format("GET", "/hello"),
    wrk.format("GET", "/hello-async"),
    wrk.format("GET", "/items/42?q=test&limit=5"),
    wrk.format("POST", "/items", {["Content-Type"] = json},
               '{"name":"Widget","price":9.99,"in_stock":true}'),
    wrk.format("POST", "/orders", {["Content-Type"] = json},
               '{"customer":"Alice","lines":[{"item_id":1,"qty":2},{"item_id":2,"qty":1}]}'),
    wrk.format("GET", "/users/1"),
    wrk.format("GET", "/auth", {["x-api-key"] = "secret"}),
    wrk.format("GET", "/users/1/profile"),
    wrk.format("GET", "/search?q=foo&page=1&size=20&active=true"),
    wrk.format("POST", "/task-sync", {}, ""),
    wrk.format("POST", "/task-async", {}, ""),
    wrk.format("POST", "/notask", {}, ""),
  }
end

function init(args)
  limit = tonumber(args[1]) or 0
  reqs = build()
  n = #reqs
end

function request()
  i = i % n + 1
  return reqs[i]
end

function response(status, headers, body)
  done = done + 1
  if status ~= 200 then
    bad = bad + 1
  end
  if limit > 0 and done >= limit and not stopped then
    stopped = true
    io.stderr:write(string.format("LIMIT_REACHED %d non200=%d\n", done, bad))
    io.stderr:flush()
    wrk.thread:stop()
  end
end
