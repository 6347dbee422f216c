"""The state icons in resources/: a shield with a seal, one per tray state, each in a variant
for light and for dark backgrounds."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from PySide6.QtGui import QGuiApplication, QIcon, QPalette

from gui.model import TrayState

__all__ = ["RESOURCES", "app_icon", "is_dark", "state_icon", "state_icon_path", "variant"]

RESOURCES = Path(os.environ.get("TUNSEAL_RESOURCES")
                 or Path(__file__).resolve().parent.parent / "resources")
"""resources/ beside gui/ (the source tree and the Debian package's private directory);
$TUNSEAL_RESOURCES overrides it."""

STATE_OF_TUNNEL = {
    "down": TrayState.DISCONNECTED,
    "connecting": TrayState.CONNECTING,
    "handshaking": TrayState.CONNECTING,
    "up": TrayState.CONNECTED,
    "unreachable": TrayState.PROBLEM,
    "error": TrayState.PROBLEM,
    "failed": TrayState.PROBLEM,
}


def is_dark(palette: QPalette | None = None) -> bool:
    """True when windows (or the given palette) have a dark background."""
    if palette is None:
        app = QGuiApplication.instance()
        if not isinstance(app, QGuiApplication):
            return False
        palette = app.palette()
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def variant(dark: bool) -> str:
    return "dark" if dark else "light"


def state_icon_path(state: TrayState, *, dark: bool = False) -> Path:
    return RESOURCES / f"tunseal-{state.value}-{variant(dark)}.svg"


@functools.cache
def _icon(path: Path) -> QIcon:
    return QIcon(str(path))


def state_icon(state: TrayState | str, *, dark: bool | None = None) -> QIcon:
    """The icon of a tray state, or of a tunnel state ('up', 'down', ...)."""
    if isinstance(state, str):
        state = STATE_OF_TUNNEL.get(state, TrayState.PROBLEM)
    return _icon(state_icon_path(state, dark=is_dark() if dark is None else dark))


def app_icon() -> QIcon:
    return _icon(RESOURCES / "tunseal.svg")
