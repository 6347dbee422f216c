#!/usr/bin/env bash
# System packages Tunseal's demo, tests and benchmarks need (Debian/Ubuntu). Idempotent:
# installs only what is missing, so it is cheap on a machine that has everything.
set -euo pipefail
PKGS=(iproute2 nftables iputils-ping iperf3 tcpdump conntrack procps curl
      dbus dbus-x11 gnome-keyring libsecret-tools
      xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0 libegl1 libgl1
      libfontconfig1 libdbus-1-3 fonts-dejavu-core
      wireguard-tools wireguard-go openvpn
      dpkg-dev fakeroot desktop-file-utils systemd
      debootstrap shellcheck lintian)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tunseal: these system packages are missing: ${missing[*]}" >&2
        echo "tunseal: run 'sudo bash installers/dev-deps.sh' once, then retry." >&2
        exit 1
    fi
    echo "tunseal: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
