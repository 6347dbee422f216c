#!/usr/bin/env bash
# Runs pytest inside a private D-Bus session with an unlocked gnome-keyring Secret Service, so
# the keyring tests use a real Secret Service and never touch the user's own keyring.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TUNSEAL_IN_TEST_SESSION:-}" ]; then
    export TUNSEAL_IN_TEST_SESSION=1
    exec dbus-run-session -- bash "$0" "$@"
fi
export HOME; HOME=$(mktemp -d /tmp/tunseal-test-home.XXXXXX)
trap 'rm -rf "$HOME"' EXIT
eval "$(printf '%s' "tunseal-test" | gnome-keyring-daemon --unlock --components=secrets)"
export GNOME_KEYRING_CONTROL
export QT_QPA_PLATFORM=offscreen
status=0
.venv/bin/python -m pytest -n 2 --dist loadgroup -p no:cacheprovider "$@" || status=$?
# pytest's "no tests collected" (5) is a failure here too: a suite that ran nothing proves nothing.
exit $status
