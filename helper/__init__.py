"""Tunseal's privileged helper: the only package that runs as root, owns TUN devices, routes,
the engine and the keys."""
