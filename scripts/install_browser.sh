#!/usr/bin/env bash
# Install Debian's Chromium for the browser end-to-end tests (Playwright drives it; it cannot
# download its own browser build on machines without internet).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "Chromium is missing: install Debian's 'chromium' package (apt-get install chromium) to run the browser tests." >&2
    exit 1
fi
echo "Installing Chromium for the browser tests"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
