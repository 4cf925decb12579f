"""Error types. Every user-facing failure is one of these, so the CLI can print one line and exit.

Exit codes follow ruff: 0 success, 1 ran but a check failed, 2 usage or input error.
"""

from __future__ import annotations

import re

__all__ = ["OnnxqError", "InputError", "ProfileError", "ProviderError", "CheckFailed", "first_line"]


class OnnxqError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is one line saying what and how."""

    exit_code = 2


class InputError(OnnxqError):
    """A model, data set or argument is missing, corrupt or does not fit."""


class ProfileError(OnnxqError):
    """A hardware profile is unknown or invalid."""


class ProviderError(OnnxqError):
    """A requested execution provider is not available or was not activated."""


class CheckFailed(OnnxqError):
    """The work ran, but a check (conformance, fidelity gate) failed."""

    exit_code = 1


_ORT_NOISE = (
    re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : "),  # onnxruntime's status prefix
    re.compile(r"/onnxruntime_src/\S+:\d+ [^()]*\([^)]*\)(?: const)? "),  # its C++ source location and signature
    re.compile(r"^Load model from \S+ failed:"),
)


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none), for one-line errors;
    onnxruntime's status prefix and C++ source locations are dropped, leaving its human sentence."""
    for line in str(e).strip().splitlines():
        if line.strip():
            text = line.strip()
            for pat in _ORT_NOISE:
                text = pat.sub("", text).strip()
            return text or type(e).__name__
    return type(e).__name__
