"""The shop's one HTML page: start a CSV import and watch it live (``GET /imports/new``).

The page posts the file to ``POST /import``, which answers ``202 Accepted`` with the task's id and status URL,
then opens the task's event stream (``EventSource(status_url + "/events")``): each event is the task's status
record, and the progress bar follows ``progress.done`` until the final state. The stream sends the browser's
cookies (never custom headers), which is why the shop's status routes are guarded by a session cookie.
Everything is inline: no build step, no CDN.
"""

IMPORT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Import products</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:40rem;color:#1b1f24}
progress{width:100%;height:1.4rem}#state{font-weight:600}.failed,.cancelled{color:#b00020}.succeeded{color:#176f2c}
pre{background:#f4f4f4;padding:.6rem;white-space:pre-wrap}
</style></head>
<body>
<h1>Import products from a CSV file</h1>
<p>Columns: <code>sku,name,price,stock</code>. The import runs in the background; this page follows it live.</p>
<form id="form"><input type="file" id="file" name="file" accept=".csv,text/csv" required>
<button id="start">Import</button> <button id="cancel" type="button" hidden>Cancel</button></form>
<p><progress id="bar" max="1" value="0"></progress></p>
<p><span id="state">no import yet</span> <span id="message"></span></p>
<pre id="result" hidden></pre>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const FINAL = ["succeeded", "failed", "cancelled"];
let statusUrl = null;
function render(record) {
  document.body.dataset.state = record.state;
  $("state").textContent = record.state;
  $("state").className = record.state;
  $("message").textContent = record.progress.message || "";
  if (record.progress.done !== null) $("bar").value = record.progress.done;
  if (record.state === "succeeded") $("bar").value = 1;
  if (record.error) $("message").textContent = record.error.type + ": " + record.error.message;
  if (record.result !== null) {
    $("result").hidden = false;
    $("result").textContent = JSON.stringify(record.result, null, 2);
  }
  $("cancel").hidden = FINAL.includes(record.state);
}
$("form").onsubmit = async (event) => {
  event.preventDefault();
  const body = new FormData();
  body.append("file", $("file").files[0]);
  $("start").disabled = true;
  const response = await fetch("/import", {method: "POST", body});
  if (response.status !== 202) {
    $("state").textContent = "refused (" + response.status + ")";
    $("start").disabled = false;
    return;
  }
  statusUrl = (await response.json()).status_url;
  const events = new EventSource(statusUrl + "/events");
  events.onmessage = (message) => {
    const record = JSON.parse(message.data);
    render(record);
    if (FINAL.includes(record.state)) { events.close(); $("start").disabled = false; }
  };
};
$("cancel").onclick = () => { if (statusUrl) fetch(statusUrl, {method: "DELETE"}); };
</script></body></html>
"""
