#!/usr/bin/env bash
# Runs pytest inside a private D-Bus session with an unlocked gnome-keyring Secret Service, so
# the keyring tests use a real Secret Service and never touch the user's own keyring.
set -euo pipefail
cd "$(dirname "$0")/.."
# HOME is made before the D-Bus session starts: a daemon that D-Bus activates (a
# gnome-keyring-daemon restarted after a crash) inherits the bus's environment, and with the
# caller's HOME it looked for the keyring elsewhere, found no collection and failed every later
# store on an unanswerable "create a collection" prompt (seen in a full run).
if [ -z "${TUNSEAL_IN_TEST_SESSION:-}" ]; then
    export TUNSEAL_IN_TEST_SESSION=1
    export HOME; HOME=$(mktemp -d /tmp/tunseal-test-home.XXXXXX)
    # The bus activates the Secret Service itself when nobody holds the name: make what it
    # starts the same unlocked daemon over the same keyring, so a daemon that died comes back
    # usable at the next keyring call (Debian's service file starts a locked one, which then
    # asks for a password nobody can type).
    bus="$HOME/.tunseal-bus"
    mkdir -p "$bus/services"
    printf '#!/bin/sh\nprintf %%s tunseal-test | exec gnome-keyring-daemon --foreground --unlock --components=secrets\n' \
        > "$bus/keyring.sh"
    chmod +x "$bus/keyring.sh"
    printf '[D-BUS Service]\nName=org.freedesktop.secrets\nExec=%s\n' "$bus/keyring.sh" \
        > "$bus/services/org.freedesktop.secrets.service"
    printf '%s\n' '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"' \
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">' '<busconfig>' \
        "  <servicedir>$bus/services</servicedir>" \
        '  <include>/usr/share/dbus-1/session.conf</include>' '</busconfig>' > "$bus/session.conf"
    status=0
    dbus-run-session --config-file="$bus/session.conf" -- bash "$0" "$@" || status=$?
    rm -rf "$HOME"
    exit $status
fi
PASSWORD=tunseal-test
eval "$(printf '%s' "$PASSWORD" | gnome-keyring-daemon --unlock --components=secrets)"
export GNOME_KEYRING_CONTROL
export QT_QPA_PLATFORM=offscreen

secrets_pid() {
    dbus-send --session --print-reply=literal --dest=org.freedesktop.DBus /org/freedesktop/DBus \
        org.freedesktop.DBus.GetConnectionUnixProcessID string:org.freedesktop.secrets \
        2>/dev/null | awk '{print $2}' || true
}
# gnome-keyring-daemon has been seen to die under the suite's concurrent keyring traffic. The
# bus then activates a fresh one through the service file above (unlocked, same keyring, the
# stored keys survive) at the next keyring call, and KeyStore retries calls that failed while
# it was gone. The watchdog only reports it: it used to start a replacement with --replace as
# well, which could kick out the daemon the bus had just activated, in the middle of a call
# ("Message recipient disconnected ... without replying" on a CreateCollection, seen in CI). It
# lives exactly as long as pytest (bounded by it).
keyring_watchdog() {
    local expected; expected=$(secrets_pid)
    while sleep 1; do
        local now; now=$(secrets_pid)
        if [ -n "$now" ] && [ "$now" != "$expected" ]; then
            echo "tests/run.sh: the test keyring daemon changed (pid ${expected:-none} -> $now; the bus restarted it)" >&2
            expected=$now
        fi
    done
}
# The daemon claims its bus name a moment after printing its environment: wait (bounded).
for _ in $(seq 100); do [ -n "$(secrets_pid)" ] && break; sleep 0.1; done
keyring_watchdog &
watchdog=$!
trap 'kill "$watchdog" 2>/dev/null' EXIT

status=0
.venv/bin/python -m pytest -n 2 --dist loadgroup -p no:cacheprovider "$@" || status=$?
# pytest's "no tests collected" (5) is a failure here too: a suite that ran nothing proves nothing.
exit $status
