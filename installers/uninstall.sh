#!/usr/bin/env bash
# Removes what installers/install.sh installed: the service (stopped first, which takes every
# tunnel down), every file it wrote outside /opt/tunseal (listed in /opt/tunseal/installed-files),
# /opt/tunseal itself (the program, its venv, the native core), the group if install.sh created
# it, /etc/tunseal and the keys. It keeps the profiles in /var/lib/tunseal/profiles. With
# --keep-keys it also keeps /etc/tunseal and /var/lib/tunseal (keys included) for a reinstall.
#
#   sudo bash installers/uninstall.sh [--keep-keys]
#   sudo bash /opt/tunseal/share/installer/uninstall.sh [--keep-keys]
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

PREFIX=/opt/tunseal
UNIT=/etc/systemd/system/tunseal-helper.service
here=$(cd "$(dirname "$0")" && pwd)
keep_keys=no

for arg in "$@"; do
    case $arg in
        --keep-keys) keep_keys=yes ;;
        -h|--help) echo "usage: sudo bash $0 [--keep-keys]"; exit 0 ;;
        *) echo "usage: sudo bash $0 [--keep-keys]" >&2; exit 2 ;;
    esac
done

say() { echo "uninstall.sh: $*"; }
[ "$(id -u)" -eq 0 ] || { echo "uninstall.sh: run it as root: sudo bash $0 $*" >&2; exit 1; }
if [ ! -d "$PREFIX" ] && [ ! -e "$UNIT" ]; then
    say "Tunseal is not installed here (no $PREFIX); nothing to do."
    exit 0
fi
# shellcheck source=common/system-setup.sh
. "$here/common/system-setup.sh"

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl disable --now tunseal-helper.service >/dev/null 2>&1 || true
fi
say "ending the lockdown (kill switch), if any"
tunseal_remove_lockdown
say "removing the service, launchers, menu entry and $PREFIX"
if [ -f "$PREFIX/installed-files" ]; then
    while IFS= read -r f; do
        rm -f "$f"
    done < "$PREFIX/installed-files"
fi
rm -f "$UNIT"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl daemon-reload || true
fi
created_group=no
[ -e "$PREFIX/.created-group" ] && created_group=yes
rm -rf "$PREFIX"

if [ "$keep_keys" = no ]; then
    say "removing /etc/tunseal, the keys and the helper's state (keeping the profiles)"
    tunseal_remove_state
else
    say "keeping /etc/tunseal and /var/lib/tunseal (keys and profiles) for a reinstall"
fi
if [ "$created_group" = yes ]; then
    say "removing group tunseal (install.sh created it)"
    tunseal_remove_group || true
fi
if [ -d /var/lib/tunseal/profiles ]; then
    say "kept your profiles in /var/lib/tunseal/profiles (they hold no keys)"
fi
say "done"
