"""Fail fast on an unreachable ``RAY_ADDRESS``: ``ray.init`` would otherwise retry for minutes."""

from __future__ import annotations

import os
import socket

from tessera.cli.errors import UserError

CONNECT_TIMEOUT_S = 3.0


def check_ray_address() -> None:
    """UserError unless ``RAY_ADDRESS`` is unset, ``auto``/``local``, or a host:port that accepts a connection."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address in ("", "auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"RAY_ADDRESS={address!r}: expected HOST:PORT (or ray://HOST:PORT, auto, local)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise UserError(f"RAY_ADDRESS={address!r}: cannot reach the Ray cluster "
                        f"({err.strerror or err}); unset it to start a local Ray") from None
