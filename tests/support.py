"""Helpers for any test module: a free loopback port, skip-or-fail for optional services."""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unavailable(what: str, require_env: str, reason: str) -> NoReturn:
    """Skip the test with the reason, or fail it when $require_env=1 (CI) demands `what`."""
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{what} required ({require_env}=1) but {reason}")
    pytest.skip(f"{what} skipped: {reason}")
