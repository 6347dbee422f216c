#!/usr/bin/env bash
# Builds the Debian package dist/tunseal_VERSION_all.deb from this source tree with dpkg-deb and
# fakeroot only: no network, no debhelper. `make deb` runs it; `build.sh OUTDIR` writes elsewhere.
#
#   /usr/lib/tunseal/{core,helper,gui,resources}   the program, private (its top-level package
#                                                   names never meet anyone else's)
#   /usr/lib/tunseal/setup-pypi-deps                what Debian 12 lacks, from PyPI (installing.md)
#   /usr/bin/tunseal, tunseal-helper, tunseal-gui   launchers (installers/common/launcher.py.in)
#   /lib/systemd/system/tunseal-helper.service      the hardened helper service
#   /usr/share/applications/org.tunseal.Tunseal.desktop, its AppStream metainfo, the hicolor
#   icon, and the tray's autostart entry in /usr/share/tunseal/autostart (off until a user or the
#   administrator copies it); man pages; bash, zsh and fish completion
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
common=$root/installers/common
out=${1:-$root/dist}

for tool in dpkg-deb gzip md5sum python3; do
    command -v "$tool" >/dev/null || {
        echo "build.sh: $tool is missing; run 'sudo bash installers/dev-deps.sh'" >&2
        exit 1
    }
done

version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$root/pyproject.toml")
# Reproducible: every file's time is the last commit's (or now, outside git).
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

stage=$(mktemp -d "${TMPDIR:-/tmp}/tunseal-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkg=$stage/tunseal
lib=$pkg/usr/lib/tunseal
doc=$pkg/usr/share/doc/tunseal

# Fills @NAME@ placeholders: subst FILE NAME=VALUE... (fails on any left unfilled).
subst() {
    python3 "$common/subst.py" "$@"
}

# --- the program ---------------------------------------------------------------------------------
install -d -m 0755 "$lib"
(cd "$root" && find core helper gui tools -name '*.py' -not -path '*/__pycache__/*' -print0) |
    while IFS= read -r -d '' f; do
        install -D -m 0644 "$root/$f" "$lib/$f"
    done
install -m 0755 "$root/helper/keyring-session.sh" "$lib/helper/keyring-session.sh"
install -m 0755 "$here/setup-pypi-deps" "$lib/setup-pypi-deps"
install -d -m 0755 "$lib/resources"
if compgen -G "$root/resources/*.svg" >/dev/null; then
    install -m 0644 "$root"/resources/*.svg "$lib/resources/"
fi

install -d -m 0755 "$pkg/usr/bin"
for program in tunseal tunseal-helper tunseal-gui; do
    subst "$common/launcher.py.in" PYTHON=/usr/bin/python3 LIBDIR=/usr/lib/tunseal \
        VENV=/usr/local/lib/tunseal/venv PROGRAM="$program" \
        SETUP="Run 'sudo /usr/lib/tunseal/setup-pypi-deps' once (it installs what Debian lacks from PyPI)." \
        SETUP_GUI="Run 'sudo /usr/lib/tunseal/setup-pypi-deps --gui' once (Debian 12 has no PySide6)." \
        > "$pkg/usr/bin/$program"
    chmod 0755 "$pkg/usr/bin/$program"
done

# --- system integration --------------------------------------------------------------------------
install -d -m 0755 "$pkg/lib/systemd/system"
subst "$common/tunseal-helper.service.in" LIBDIR=/usr/lib/tunseal BINDIR=/usr/bin \
    DOCDIR=/usr/share/doc/tunseal > "$pkg/lib/systemd/system/tunseal-helper.service"
chmod 0644 "$pkg/lib/systemd/system/tunseal-helper.service"
install -D -m 0644 "$common/org.tunseal.Tunseal.desktop" \
    "$pkg/usr/share/applications/org.tunseal.Tunseal.desktop"
install -D -m 0644 "$root/resources/org.tunseal.Tunseal.metainfo.xml" \
    "$pkg/usr/share/metainfo/org.tunseal.Tunseal.metainfo.xml"
# Shell completion, generated from the CLI's own parser (core/completion.py).
py=$root/.venv/bin/python
[ -x "$py" ] || py=python3
for shell_target in bash:usr/share/bash-completion/completions/tunseal \
        zsh:usr/share/zsh/vendor-completions/_tunseal \
        fish:usr/share/fish/vendor_completions.d/tunseal.fish; do
    install -d -m 0755 "$(dirname "$pkg/${shell_target#*:}")"
    (cd "$root" && "$py" -m core.cli completion "${shell_target%%:*}") > "$pkg/${shell_target#*:}" || {
        echo "build.sh: cannot generate the ${shell_target%%:*} completion (run 'make setup')" >&2
        exit 1
    }
    chmod 0644 "$pkg/${shell_target#*:}"
done
install -D -m 0644 "$common/tunseal-tray.desktop" \
    "$pkg/usr/share/tunseal/autostart/tunseal-tray.desktop"
if [ -f "$root/resources/tunseal.svg" ]; then
    install -D -m 0644 "$root/resources/tunseal.svg" \
        "$pkg/usr/share/icons/hicolor/scalable/apps/tunseal.svg"
else
    echo "build.sh: warning: resources/tunseal.svg is missing; the menu entry has no icon" >&2
fi

# --- documentation -------------------------------------------------------------------------------
for page in "$here"/man/*.[18]; do
    section=${page##*.}
    target=$pkg/usr/share/man/man$section/$(basename "$page").gz
    install -d -m 0755 "$(dirname "$target")"
    gzip -9n < "$page" > "$target"
    chmod 0644 "$target"
done
install -d -m 0755 "$doc"
install -m 0644 "$here/copyright" "$doc/copyright"
for f in "$root/README.md" "$root"/docs/*.md; do
    [ -f "$f" ] && install -m 0644 "$f" "$doc/"
done
install -m 0644 "$root/installers/README.md" "$doc/installing.md"
changelog_date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
printf 'tunseal (%s) unstable; urgency=medium\n\n  * Built from the Tunseal source tree.\n\n -- %s  %s\n' \
    "$version" "Tunseal maintainers <maintainers@tunseal.example>" "$changelog_date" |
    gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

# --- control -------------------------------------------------------------------------------------
install -d -m 0755 "$pkg/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
subst "$here/control.in" VERSION="$version" SIZE="$size" > "$pkg/DEBIAN/control"
setup=$(cat "$common/system-setup.sh")
subst "$here/postinst.in" SYSTEM_SETUP="$setup" > "$pkg/DEBIAN/postinst"
subst "$here/postrm.in" SYSTEM_SETUP="$setup" > "$pkg/DEBIAN/postrm"
install -m 0755 "$here/prerm" "$pkg/DEBIAN/prerm"
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/postrm"
chmod 0644 "$pkg/DEBIAN/control"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) > "$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/md5sums"

find "$pkg" -type d -exec chmod 0755 {} +
find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$out"
deb=$out/tunseal_${version}_all.deb
if command -v fakeroot >/dev/null; then
    fakeroot -- dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
else
    dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
fi
echo "$deb"
