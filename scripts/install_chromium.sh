#!/usr/bin/env bash
# Install Chromium for `make docs-check` (the browser check of the docs site), from the
# distribution's packages: Debian and Ubuntu name it chromium. Needs root (as CI runs).
# The fonts are those the layout check was tuned with: DejaVu Sans Mono for code, Liberation
# Sans for the text (what Helvetica and Arial resolve to on Linux).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium: install Chromium with your package manager (Debian/Ubuntu: apt-get install chromium)" >&2
  exit 1
fi
echo "install_chromium: apt-get install chromium"
export DEBIAN_FRONTEND=noninteractive
for attempt in 1 2 3; do  # a mirror that fails once should not fail the check
  if apt-get update -qq &&
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core fonts-liberation \
      >/dev/null; then
    break
  fi
  [ "$attempt" = 3 ] && exit 1
  sleep 10
done
chromium --version
