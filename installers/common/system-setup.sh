# System set-up shared by the Debian maintainer scripts and installers/install.sh (POSIX sh).
# build.sh copies these functions into postinst and postrm; install.sh and uninstall.sh source
# this file. Paths are fixed: /etc/tunseal (the keyring password), /var/lib/tunseal (state),
# group tunseal (who may use the helper). See docs/KEYRING.md.

# The state directories, root-only.
tunseal_make_dirs() {
    install -d -m 0700 /etc/tunseal /var/lib/tunseal /var/lib/tunseal/keyring \
        /var/lib/tunseal/profiles
}

# The group whose members may use the helper. Prints "created" if it had to create it.
tunseal_make_group() {
    if getent group tunseal >/dev/null; then
        return 0
    fi
    if command -v addgroup >/dev/null 2>&1 && [ -e /etc/debian_version ]; then
        addgroup --system --quiet tunseal
    else
        groupadd --system tunseal
    fi
    echo created
}

# The keyring's password: random, root-only, made once and never replaced (a new password
# cannot open the old keyring). A keyring left without its password is moved aside, not reused.
tunseal_make_password() {
    if [ -e /etc/tunseal/keyring.pass ]; then
        return 0
    fi
    if [ -e /var/lib/tunseal/keyring/keyrings/login.keyring ]; then
        orphan=/var/lib/tunseal/keyring.orphaned-$(date +%Y%m%d%H%M%S)
        mv /var/lib/tunseal/keyring "$orphan"
        install -d -m 0700 /var/lib/tunseal/keyring
        echo "tunseal: /etc/tunseal/keyring.pass is missing, so the existing keyring cannot be" \
             "opened; it was moved to $orphan (restore the old password file to use it)." >&2
    fi
    (umask 077 && head -c 32 /dev/urandom | base64 > /etc/tunseal/keyring.pass)
}

# Removes the keyring password, the keys (useless without it) and the helper's other state, but
# never the profiles in /var/lib/tunseal/profiles: they are the users' work and hold no secret.
tunseal_remove_state() {
    rm -rf /etc/tunseal
    if [ -d /var/lib/tunseal ]; then
        find /var/lib/tunseal -mindepth 1 -maxdepth 1 ! -name profiles -exec rm -rf {} +
        rmdir /var/lib/tunseal/profiles 2>/dev/null || true
        rmdir /var/lib/tunseal 2>/dev/null || true
    fi
}

tunseal_remove_group() {
    if getent group tunseal >/dev/null; then
        groupdel tunseal
    fi
}

# Ends the kill switch (docs/LOCKDOWN.md): the nftables table a stopped helper leaves in force
# on purpose when lockdown 'always' is on, and its saved state (a reinstall must not come back
# blocking); also the full tunnels' policy rules (proto 77) a crashed helper may have left.
# Bounded loops: each rule is deleted at most a few times, whatever ip answers.
tunseal_remove_lockdown() {
    if command -v nft >/dev/null 2>&1; then
        nft delete table inet tunseal_lockdown 2>/dev/null || true
    fi
    rm -f "${TUNSEAL_LOCKDOWN_STATE:-/var/lib/tunseal/lockdown.json}"
    if command -v ip >/dev/null 2>&1; then
        for fam in -4 -6; do
            for _ in 1 2 3 4; do
                ip "$fam" rule del priority 32765 not fwmark 0x7453 table 29779 2>/dev/null \
                    || break
            done
            for _ in 1 2 3 4; do
                ip "$fam" rule del priority 32764 table main suppress_prefixlength 0 \
                    2>/dev/null || break
            done
        done
    fi
}
