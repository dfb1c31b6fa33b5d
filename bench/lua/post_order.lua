-- Scenario 4: POST /orders with a nested JSON body.
wrk.method = "POST"
wrk.body = '{"customer":"Alice","lines":[{"item_id":1,"qty":2},{"item_id":2,"qty":1}]}'
wrk.headers["Content-Type"] = "application/json"
