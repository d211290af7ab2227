#!/usr/bin/env bash
# Debian's Chromium and its WebDriver, for the web page's browser test (tests/test_server.py).
# Run by `make install`; it needs root (or sudo) and apt, and does nothing when they are there.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
