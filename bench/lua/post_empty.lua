-- Scenarios 10-13: POST without a body (Content-Length: 0).
wrk.method = "POST"
wrk.body = ""
