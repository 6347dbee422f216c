#!/usr/bin/env bash
# Runs a command (the Tunseal helper) in a private D-Bus session whose Secret Service is a
# gnome-keyring-daemon unlocked with a machine-local password file. See docs/KEYRING.md.
#
#   keyring-session.sh PASSWORD_FILE COMMAND [ARG...]
#
# The keyring's data lives in $TUNSEAL_KEYRING_DIR (default /var/lib/tunseal/keyring): HOME and
# XDG_DATA_HOME point there, so the login keyring is $TUNSEAL_KEYRING_DIR/keyrings/login.keyring.
# The first run creates that keyring with the file's password; later runs unlock it. With any
# other password it stays locked and the helper's KeyStore refuses to start.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: keyring-session.sh PASSWORD_FILE COMMAND [ARG...]" >&2
    exit 2
fi
passfile=$1
shift

# gnome-keyring stores an empty-password keyring unencrypted, and a file others can read gives
# the key away: refuse both rather than run with a keyring that protects nothing.
if [ ! -f "$passfile" ] || [ -L "$passfile" ] || [ ! -O "$passfile" ]; then
    echo "keyring-session: $passfile must be a regular file owned by $(id -un);" \
         "create it with: (umask 077; head -c 32 /dev/urandom | base64 > $passfile)" >&2
    exit 1
fi
if [ "$(( 8#$(stat -c %a "$passfile") & 8#077 ))" -ne 0 ]; then
    echo "keyring-session: $passfile is readable by others; run: chmod 600 $passfile" >&2
    exit 1
fi
if [ ! -s "$passfile" ]; then
    echo "keyring-session: $passfile is empty; an empty password leaves the keyring" \
         "unencrypted. Put a random password in it: head -c 32 /dev/urandom | base64" >&2
    exit 1
fi

dir=${TUNSEAL_KEYRING_DIR:-/var/lib/tunseal/keyring}
mkdir -p "$dir"
chmod 0700 "$dir"
export HOME="$dir" XDG_DATA_HOME="$dir"
# Keep this daemon to itself: inherit no other session's keyring control socket or runtime dir
# (a desktop's $XDG_RUNTIME_DIR/keyring, the test runner's GNOME_KEYRING_CONTROL), and never try
# to show an unlock prompt. Without a runtime dir gnome-keyring puts its control socket in a fresh
# $HOME/.cache/keyring-XXXXXX, removed when it exits.
unset GNOME_KEYRING_CONTROL XDG_RUNTIME_DIR XDG_CONFIG_HOME XDG_CACHE_HOME DISPLAY WAYLAND_DISPLAY

# If the daemon ever exits (it has been seen to die under heavy concurrent use), the bus
# activates org.freedesktop.secrets again at the next call. Debian's own service file would
# start a locked daemon that asks for a password nobody can type, so this session's bus knows
# only ours: the same daemon, unlocked from the same password file (KeyStore retries calls that
# failed while it was away).
bus="$dir/bus"
mkdir -p "$bus/services"
chmod 0700 "$bus"
printf '#!/bin/sh\nexec gnome-keyring-daemon --foreground --unlock --components=secrets < %s\n' \
    "$(printf %q "$(realpath "$passfile")")" > "$bus/keyring.sh"
chmod 0700 "$bus/keyring.sh"
printf '[D-BUS Service]\nName=org.freedesktop.secrets\nExec="%s"\n' "$bus/keyring.sh" \
    > "$bus/services/org.freedesktop.secrets.service"
printf '%s\n' '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"' \
    ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">' '<busconfig>' \
    "  <servicedir>$bus/services</servicedir>" \
    '  <include>/usr/share/dbus-1/session.conf</include>' '</busconfig>' > "$bus/session.conf"

# Inside the session: start the daemon, unlocking (or creating) the login keyring with the file's
# password; wait (up to 10 s) until it owns org.freedesktop.secrets, because it registers on the
# bus only after printing its environment and a client that asks earlier makes D-Bus activate a
# second daemon; then become the command. The daemon exits when the session's bus goes away.
exec dbus-run-session --config-file="$bus/session.conf" -- bash -c '
    set -euo pipefail
    eval "$(gnome-keyring-daemon --unlock --components=secrets < "$1")"
    export GNOME_KEYRING_CONTROL
    shift
    for _ in $(seq 100); do
        dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
            org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets 2>/dev/null \
            | grep -q "boolean true" && break
        sleep 0.1
    done
    exec "$@"
' keyring-session "$passfile" "$@"
