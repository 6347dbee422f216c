#!/usr/bin/env bash
# Builds the Debian package dist/tunseal_VERSION_ARCH.deb from this source tree with dpkg-deb,
# fakeroot and cargo: no debhelper. `make deb` runs it; `build.sh OUTDIR` writes elsewhere.
#
#   build.sh [--no-native] [OUTDIR]
#
# The package carries the native data-path core (native/, Rust; the abi3 module tunseal_native,
# one build for every CPython >= 3.11), so it is built for this machine's architecture
# (dpkg --print-architecture). Without cargo the build stops and says so: a packager gets the
# package they asked for or an error, never a slower one by surprise. --no-native builds the
# Architecture: all package without it (the pure-Python data path), with a warning. cargo
# fetches the crates in native/Cargo.lock (from crates.io, unless they are in its cache) and
# builds in native/target, or in $CARGO_TARGET_DIR when that is set.
#
#   /usr/lib/tunseal/{core,helper,gui,resources}   the program, private (its top-level package
#                                                   names never meet anyone else's)
#   /usr/lib/tunseal/tunseal_native.abi3.so         the native core, beside the packages that
#                                                   import it (the launchers put this directory
#                                                   first on sys.path)
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
native=yes
out=$root/dist
for arg in "$@"; do
    case $arg in
        --no-native) native=no ;;
        -h|--help) echo "usage: $0 [--no-native] [OUTDIR]"; exit 0 ;;
        -*) echo "usage: $0 [--no-native] [OUTDIR]" >&2; exit 2 ;;
        *) out=$arg ;;
    esac
done

tools=(dpkg-deb gzip md5sum python3)
[ "$native" = yes ] && tools+=(dpkg dpkg-shlibdeps strip)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || {
        echo "build.sh: $tool is missing; run 'sudo bash installers/dev-deps.sh'" >&2
        exit 1
    }
done
if [ "$native" = yes ] && ! command -v cargo >/dev/null; then
    cat >&2 <<'EOF'
build.sh: cargo (Rust) is missing, and the package carries the native data-path core.
build.sh: install Rust 1.78 or later (https://rustup.rs; Debian 12's cargo is too old for
build.sh: native/Cargo.lock) and run this again, or build the Architecture: all package
build.sh: without it (the slower pure-Python data path): bash installers/debian/build.sh --no-native
EOF
    exit 1
fi

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

# --- the native data-path core -------------------------------------------------------------------
# The same cargo build as install.sh's (a CARGO_TARGET_DIR that holds it is reused as it is),
# stripped as dh_strip strips; dpkg-shlibdeps names the libraries it links (libc, libgcc).
native_depends=""
if [ "$native" = yes ]; then
    arch=$(dpkg --print-architecture)
    target=${CARGO_TARGET_DIR:-$root/native/target}
    CARGO_TARGET_DIR=$target cargo build --quiet --release --locked \
        --manifest-path "$root/native/Cargo.toml" || {
        echo "build.sh: the native core (native/) did not build; see cargo's words above" >&2
        exit 1
    }
    so=$lib/tunseal_native.abi3.so
    install -m 0644 "$target/release/libtunseal_native.so" "$so"
    strip --remove-section=.comment --remove-section=.note --strip-unneeded "$so"
    install -d "$stage/shlibs/debian"
    printf 'Source: tunseal\n\nPackage: tunseal\nArchitecture: any\n' \
        > "$stage/shlibs/debian/control"
    native_depends=$(cd "$stage/shlibs" && dpkg-shlibdeps -O -e"$so" 2>/dev/null |
        sed -n 's/^shlibs:Depends=//p')
    [ -n "$native_depends" ] || {
        echo "build.sh: dpkg-shlibdeps found no library for $so" >&2
        exit 1
    }
    native_depends=", $native_depends"
else
    arch=all
    echo "build.sh: warning: building without the native data-path core (--no-native):" \
        "the package runs the slower pure-Python data path" >&2
fi

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
subst "$here/control.in" VERSION="$version" SIZE="$size" ARCH="$arch" \
    NATIVE_DEPENDS="$native_depends" > "$pkg/DEBIAN/control"
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
deb=$out/tunseal_${version}_${arch}.deb
if command -v fakeroot >/dev/null; then
    fakeroot -- dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
else
    dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
fi
echo "$deb"
