#!/usr/bin/env bash
# Creates the virtual environment; on a fresh Debian the venv module may be a separate package.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
[ -x "$venv/bin/python" ] && exit 0
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Medi-KUS needs Python 3.11 or newer; $python is $("$python" --version 2>&1)." >&2
    exit 1
fi
if ! "$python" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "Installing the Debian package python3-venv ..."
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else
        echo "Python's venv module is missing: run 'sudo apt-get install python3-venv' and try again." >&2
        exit 1
    fi
    "$python" -m venv "$venv"
fi
