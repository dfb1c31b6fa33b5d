-- Scenario 6: GET /auth with the API key header.
wrk.method = "GET"
wrk.headers["x-api-key"] = "secret"
