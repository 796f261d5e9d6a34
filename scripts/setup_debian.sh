#!/usr/bin/env bash
# Install the Debian packages Slimbench uses (data and the browser for UI tests), once.
# Fast when they are already there; only acts as root on a Debian-like system.
set -euo pipefail
packages=(dataset-fashion-mnist chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "note: missing Debian packages ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
