"""Tunseal's unprivileged core: wire format, crypto, sessions, profiles, IPC schema and client.

Nothing in this package needs privileges or touches the network configuration.
"""
