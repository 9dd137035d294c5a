"""Optional features and the extra that installs each: a missing one is a one-line error naming
the `pip install` that adds it, never an ImportError traceback."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType

from simclr.errors import UserError

log = logging.getLogger("simclr")

DISTRIBUTION = "simclr-torch"  # the name on the package index; `import simclr` stays

# extra -> (the module it provides, what needs it)
EXTRAS = {
    "report": ("matplotlib", "report.html"),
    "tensorboard": ("tensorboard", "TensorBoard logging"),
    "text": ("tokenizers", "the text modality"),
    "video": ("av", "video files (PyAV)"),
    "onnx": ("onnxscript", "ONNX export"),
}


def install_hint(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def available(extra: str) -> bool:
    """Whether the extra's module is installed (without importing it)."""
    return importlib.util.find_spec(EXTRAS[extra][0]) is not None


def require(extra: str, module: str | None = None) -> ModuleType:
    """The extra's module (or `module`, one it installs), else a UserError with the install line."""
    name, needed_by = EXTRAS[extra]
    try:
        return importlib.import_module(module or name)
    except ImportError:
        raise UserError(f"{needed_by} needs the [{extra}] extra: {install_hint(extra)}") from None


def wanted(extra: str, setting: bool | None) -> bool:
    """Whether an optional output is made: `setting` True needs the extra (else the one-line
    error), False never; None makes it when the extra is installed and says once how to add it."""
    if setting is None:
        if available(extra):
            return True
        log.info("%s is off: %s adds it", EXTRAS[extra][1], install_hint(extra))
        return False
    if setting:
        require(extra)
    return setting
