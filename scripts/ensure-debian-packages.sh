#!/usr/bin/env bash
# Debian packages the system needs beyond Python and Node: dbus-daemon (the station's simulated
# BlueZ runs on a private bus; make demo and the tests use it) and chromium (the browser tests,
# Playwright drives Debian's build). Installs them when root, else says how.
set -euo pipefail
missing=()
command -v dbus-daemon >/dev/null || missing+=(dbus)
command -v chromium >/dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing the Debian packages ${missing[*]} ..."
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "Missing Debian packages: run 'sudo apt-get install ${missing[*]}' and try again." >&2
    exit 1
fi
