-- Scenario 3: POST /items with a JSON body.
wrk.method = "POST"
wrk.body = '{"name":"Widget","price":9.99,"in_stock":true}'
wrk.headers["Content-Type"] = "application/json"
