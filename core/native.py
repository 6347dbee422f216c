"""Which data-path core is in use: the native one (the ``tunseal_native`` module, Rust, built
from ``native/``) unless ``TUNSEAL_NATIVE=0`` or it is not built, else the pure-Python path.

Both carry every mode; the pure-Python path is the specification the native one is tested
against (tests/native/). The choice is made once, at import: a keypair made with one core is
sealed and opened by that core for its whole life.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

log = logging.getLogger(__name__)

API = 2
"""The native module's interface version this code speaks (``tunseal_native.API``)."""


def _import() -> tuple[ModuleType | None, str]:
    try:
        import tunseal_native
    except ImportError:
        return None, "the native module is not built"
    api = getattr(tunseal_native, "API", None)
    if api != API:
        return None, f"the native module speaks API {api}, not {API}"
    return tunseal_native, ""


built, _why_not_built = _import()
"""The native module if it is built and speaks our API, whether in use or not (tests)."""
if built is not None and os.environ.get("TUNSEAL_NATIVE", "1") == "0":
    module, why_not = None, "TUNSEAL_NATIVE=0"
else:
    module, why_not = built, _why_not_built
"""The native module in use, or None (then ``why_not`` says why)."""
_logged = False


def describe() -> str:
    return "native core" if module is not None else f"pure-Python path ({why_not})"


def log_choice() -> None:
    """Log once per process which data path is in use."""
    global _logged
    if not _logged:
        _logged = True
        log.info("data path: %s", describe())
