"""The Tunseal desktop client: a PySide6 window and tray icon, an unprivileged client of the
helper like the CLI (it never imports :mod:`helper`).

Widgets are thin. The logic lives in plain modules that are tested without a window:
:mod:`gui.model` (profiles, status, history, logs), :mod:`gui.notify` (which state changes are
worth a notification, and the rate limiter), :mod:`gui.format` (human units),
:mod:`gui.profile_form` (editor text to a profile). :mod:`gui.helper_client` is the Qt bridge to
:mod:`core.ipcclient`; :mod:`gui.app` puts the pieces together.
"""
