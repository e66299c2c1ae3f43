#!/bin/sh
# Debian's chromium, for the web app's browser tests (tests/test_webapp.py drives it through playwright, headless;
# playwright downloads no browser). Part of the README's test command; does nothing when chromium is there.
[ -x /usr/bin/chromium ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: no apt-get here; install chromium at /usr/bin/chromium for tests/test_webapp.py" >&2
    exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
