#!/usr/bin/env bash
# System packages Tunseal's demo, tests and benchmarks need (Debian/Ubuntu). Idempotent:
# installs only what is missing, so it is cheap on a machine that has everything.
set -euo pipefail
PKGS=(iproute2 nftables iputils-ping iperf3 tcpdump conntrack procps curl
      dbus dbus-x11 gnome-keyring libsecret-tools
      xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0 libegl1 libgl1
      libfontconfig1 libdbus-1-3 fonts-dejavu-core
      wireguard-tools wireguard-go openvpn dnsmasq-base
      dpkg-dev fakeroot desktop-file-utils systemd
      debootstrap shellcheck lintian
      appstream zsh fish util-linux)  # doctor/desktop: metainfo, completion, setpriv
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

# systemd-resolved for the DNS tests (tests/net/resolvedlab.py), unpacked and never installed:
# installing the package would turn this machine's /etc/resolv.conf into a link to a resolver
# that nothing starts (there is no systemd running here). The tests run the unpacked daemon in
# throwaway namespaces on a private system bus. Its version must be libsystemd-shared's.
RESOLVED_DIR=/opt/tunseal-dev/systemd-resolved
ver=$(dpkg-query -W -f='${Version}' libsystemd-shared 2>/dev/null || true)
if [ -n "$ver" ] && [ "$(cat "$RESOLVED_DIR/.version" 2>/dev/null || true)" != "$ver" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tunseal: systemd-resolved $ver is not unpacked in $RESOLVED_DIR;" \
             "run 'sudo bash installers/dev-deps.sh' once, then retry." >&2
        exit 1
    fi
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    get() { (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "systemd-resolved=$ver"); }
    get || { apt-get update -qq && get; }
    rm -rf "$RESOLVED_DIR"
    mkdir -p "$RESOLVED_DIR"
    dpkg-deb -x "$tmp"/systemd-resolved_*.deb "$RESOLVED_DIR"
    echo "$ver" > "$RESOLVED_DIR/.version"
    echo "tunseal: unpacked systemd-resolved $ver in $RESOLVED_DIR"
fi
