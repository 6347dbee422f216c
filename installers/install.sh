#!/usr/bin/env bash
# Installs Tunseal on a Linux distribution without the Debian package (installers/README.md):
# the program in /opt/tunseal/lib, its Python dependencies in a private venv /opt/tunseal/venv
# (from PyPI, as pyproject.toml lists them), launchers in /usr/local/bin, the same systemd unit,
# group, keyring password, menu entry and tray autostart entry as the .deb. Where cargo (Rust)
# is on the PATH it builds the native data-path core (native/; cargo fetches the crates in
# native/Cargo.lock unless they are in its cache) into $PREFIX/lib/tunseal_native.abi3.so; else it
# says it installs the slower pure-Python data path. Run again, it upgrades in place (and
# builds the native core then, if cargo is there now). Undo it with uninstall.sh (it keeps the
# profiles).
#
#   sudo bash installers/install.sh [--with-gui] [--no-start]
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

PREFIX=/opt/tunseal
BINDIR=/usr/local/bin
SHARE=/usr/local/share
UNIT=/etc/systemd/system/tunseal-helper.service
MIN_CRYPTOGRAPHY=47  # the data path's AEAD encrypt_into
PURE_PYTHON="installing the slower pure-Python data path"

src=$(cd "$(dirname "$0")/.." && pwd)
common=$src/installers/common
with_gui=no
start=yes

usage() {
    cat <<EOF
usage: sudo bash installers/install.sh [--with-gui] [--no-start]
  --with-gui   also install PySide6 from PyPI, for the desktop client (tunseal-gui)
  --no-start   do not enable and start tunseal-helper.service
EOF
}

for arg in "$@"; do
    case $arg in
        --with-gui) with_gui=yes ;;
        --no-start) start=no ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run it as root: sudo bash $0 $*"
if [ ! -f "$src/helper/main.py" ] || [ ! -f "$common/launcher.py.in" ]; then
    die "run it from a Tunseal source tree (installers/install.sh beside core/, helper/, gui/)"
fi

# --- what the system must provide ----------------------------------------------------------------
missing=()
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
    missing+=("Python 3.11 or later (python3)")
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=("Python's venv module (python3-venv)")
for tool in dbus-run-session dbus-send gnome-keyring-daemon getent groupadd install; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    printf 'install.sh: missing: %s\n' "${missing[@]}" >&2
    cat >&2 <<'EOF'
install.sh: install them with your distribution's package manager, for example
  Debian, Ubuntu:  apt install python3 python3-venv gnome-keyring dbus iproute2
  Fedora:          dnf install python3 gnome-keyring dbus-daemon dbus-tools iproute
  Arch:            pacman -S python gnome-keyring dbus iproute2
  openSUSE:        zypper install python3 gnome-keyring dbus-1 iproute2
EOF
    exit 1
fi

# --- the program ---------------------------------------------------------------------------------
say "installing the program into $PREFIX/lib"
install -d -m 0755 "$PREFIX" "$PREFIX/share/doc" "$PREFIX/share/autostart" "$PREFIX/share/installer"
rm -rf "$PREFIX/lib.new"
install -d -m 0755 "$PREFIX/lib.new"
(cd "$src" && find core helper gui tools -name '*.py' -not -path '*/__pycache__/*' -print0) |
    while IFS= read -r -d '' f; do
        install -D -m 0644 "$src/$f" "$PREFIX/lib.new/$f"
    done
install -m 0755 "$src/helper/keyring-session.sh" "$PREFIX/lib.new/helper/keyring-session.sh"
install -d -m 0755 "$PREFIX/lib.new/resources"
if compgen -G "$src/resources/*.svg" >/dev/null; then
    install -m 0644 "$src"/resources/*.svg "$PREFIX/lib.new/resources/"
fi
# The native data-path core (native/, Rust): built where cargo exists, else the helper runs the
# slower pure-Python data path (every mode works on both). The same build as debian/build.sh's,
# in a throwaway target directory (never root-owned files in the source tree's native/target).
get_native="install Rust 1.78 or later (https://rustup.rs) and run this again with cargo"
get_native+=" on root's PATH (sudo env PATH=\"\$PATH\" bash $0)"
if command -v cargo >/dev/null && [ -f "$src/native/Cargo.toml" ]; then
    say "building the native data-path core with cargo (a few minutes)"
    native_target=$(mktemp -d "${TMPDIR:-/tmp}/tunseal-native.XXXXXX")
    if CARGO_TARGET_DIR=$native_target cargo build --quiet --release --locked \
            --manifest-path "$src/native/Cargo.toml"; then
        install -m 0644 "$native_target/release/libtunseal_native.so" \
            "$PREFIX/lib.new/tunseal_native.abi3.so"
    else
        say "the native core did not build (cargo's words above): $PURE_PYTHON"
    fi
    rm -rf "$native_target"
else
    say "no cargo (Rust) here: $PURE_PYTHON. For the native core: $get_native"
fi
rm -rf "${PREFIX:?}/lib"
mv "$PREFIX/lib.new" "$PREFIX/lib"

say "installing the Python dependencies into $PREFIX/venv (from PyPI)"
[ -x "$PREFIX/venv/bin/python3" ] || python3 -m venv "$PREFIX/venv"
extras=()
[ "$with_gui" = yes ] && extras=(gui)
mapfile -t requirements < <(python3 - "$src/pyproject.toml" "${extras[@]}" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for req in project["dependencies"]:
    print(req)
for extra in sys.argv[2:]:
    for req in project["optional-dependencies"][extra]:
        print(req)
PY
)
"$PREFIX/venv/bin/python3" -m pip install --quiet --upgrade --disable-pip-version-check \
    "${requirements[@]}" "cryptography>=$MIN_CRYPTOGRAPHY"
"$PREFIX/venv/bin/python3" -m compileall -q "$PREFIX/lib" >/dev/null || true
# Which core the installed helper will run, as it chooses (core/native.py).
datapath=$("$PREFIX/venv/bin/python3" -I -c \
    'import sys; sys.path.insert(0, sys.argv[1]); from core import native; print(native.describe())' \
    "$PREFIX/lib")
say "data path: $datapath"

# --- launchers, unit, desktop files, docs --------------------------------------------------------
subst() { python3 "$common/subst.py" "$@"; }
manifest=$PREFIX/installed-files
: > "$manifest.new"
put() {  # put TARGET MODE < CONTENT: write a file outside $PREFIX and remember it
    install -d -m 0755 "$(dirname "$1")"
    cat > "$1.tmp"
    chmod "$2" "$1.tmp"
    mv "$1.tmp" "$1"
    echo "$1" >> "$manifest.new"
}
for program in tunseal tunseal-helper tunseal-gui; do
    subst "$common/launcher.py.in" PYTHON="$PREFIX/venv/bin/python3" LIBDIR="$PREFIX/lib" \
        VENV="" PROGRAM="$program" \
        SETUP="Run: sudo $PREFIX/venv/bin/python3 -m pip install --upgrade 'cryptography>=$MIN_CRYPTOGRAPHY'" \
        SETUP_GUI="Run 'sudo bash installers/install.sh --with-gui' (it adds PySide6 from PyPI)." |
        put "$BINDIR/$program" 0755
done
subst "$common/tunseal-helper.service.in" LIBDIR="$PREFIX/lib" BINDIR="$BINDIR" \
    DOCDIR="$PREFIX/share/doc" | put "$UNIT" 0644
put "$SHARE/applications/org.tunseal.Tunseal.desktop" 0644 < "$common/org.tunseal.Tunseal.desktop"
put "$SHARE/metainfo/org.tunseal.Tunseal.metainfo.xml" 0644 \
    < "$src/resources/org.tunseal.Tunseal.metainfo.xml"
for page in "$src"/installers/debian/man/*.[18]; do
    name=$(basename "$page")
    gzip -9n < "$page" | put "$SHARE/man/man${name##*.}/$name.gz" 0644
done
# Shell completion, generated by the installed CLI from its own parser (core/completion.py).
"$BINDIR/tunseal" completion bash | put "$SHARE/bash-completion/completions/tunseal" 0644
"$BINDIR/tunseal" completion zsh | put "$SHARE/zsh/site-functions/_tunseal" 0644
"$BINDIR/tunseal" completion fish | put "$SHARE/fish/vendor_completions.d/tunseal.fish" 0644
if [ -f "$src/resources/tunseal.svg" ]; then
    put "$SHARE/icons/hicolor/scalable/apps/tunseal.svg" 0644 < "$src/resources/tunseal.svg"
fi
install -m 0644 "$common/tunseal-tray.desktop" "$PREFIX/share/autostart/tunseal-tray.desktop"
for f in "$src/README.md" "$src"/docs/*.md "$src/installers/README.md"; do
    [ -f "$f" ] || continue
    name=$(basename "$f")
    [ "$f" = "$src/installers/README.md" ] && name=installing.md
    install -m 0644 "$f" "$PREFIX/share/doc/$name"
done
install -m 0755 "$src/installers/uninstall.sh" "$PREFIX/share/installer/uninstall.sh"
install -d -m 0755 "$PREFIX/share/installer/common"
install -m 0644 "$common/system-setup.sh" "$PREFIX/share/installer/common/system-setup.sh"
# Files a previous install put outside $PREFIX and this one did not: remove them.
if [ -f "$manifest" ]; then
    { grep -vxFf "$manifest.new" "$manifest" || true; } | while IFS= read -r old; do
        rm -f "$old"
    done
fi
mv "$manifest.new" "$manifest"

# --- group, keyring password, state --------------------------------------------------------------
# shellcheck source=common/system-setup.sh
. "$common/system-setup.sh"
if [ "$(tunseal_make_group)" = created ]; then
    : > "$PREFIX/.created-group"
    say "created group tunseal (its members may use the helper)"
fi
tunseal_make_dirs
tunseal_make_password

# --- the service ---------------------------------------------------------------------------------
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl daemon-reload
    if [ "$start" = yes ]; then
        systemctl enable tunseal-helper.service >/dev/null
        systemctl restart tunseal-helper.service
        say "tunseal-helper.service is enabled and running"
    fi
else
    say "systemd is not running here: start the helper yourself, as root:"
    say "  $PREFIX/lib/helper/keyring-session.sh /etc/tunseal/keyring.pass $BINDIR/tunseal-helper"
fi

say "done. Try: tunseal list. To use Tunseal without sudo: usermod -aG tunseal USER, then log in again."
say "Tray at login: cp $PREFIX/share/autostart/tunseal-tray.desktop ~/.config/autostart/"
say "Uninstall: sudo bash $PREFIX/share/installer/uninstall.sh (keeps your profiles)"
