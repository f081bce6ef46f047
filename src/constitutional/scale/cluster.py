"""Joining a Ray cluster, or starting a local one, with errors a user can act on.

`ray.init(address="host:port")` against a host where nothing listens retries for minutes before
it gives up, so an address is first probed with a plain TCP connect of a few seconds.
"""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit

from constitutional.errors import UserError

PROBE_SECONDS = 5.0
RAY_GCS_PORT = 6379  # `ray start --head` default
RAY_CLIENT_PORT = 10001  # Ray Client (ray://) default


def import_ray():
    """Import Ray, or tell the user which extra brings it."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'constitutional[scale]'") from None
    return ray


def probe_address(address: str, timeout: float = PROBE_SECONDS) -> None:
    """Fail fast when nothing listens at a Ray address ("host:port" or "ray://host:port").

    "auto" and "local" are left to Ray, which answers those at once.

    Raises:
        UserError: the address is malformed, or no TCP connection within `timeout` seconds.
    """
    if address in ("auto", "local"):
        return
    client = address.startswith("ray://")
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port or (RAY_CLIENT_PORT if client else RAY_GCS_PORT)
    except ValueError:
        raise UserError(f"--ray-address {address!r} is not host:port or ray://host:port") from None
    if not host:
        raise UserError(f"--ray-address {address!r} is not host:port or ray://host:port")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(
            f"cannot reach the Ray cluster at {address} ({host}:{port}: {e.strerror or e}); "
            "start one with `ray start --head`, or leave out --ray-address for a local one"
        ) from None


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Make sure this process is connected to Ray; returns True when it started Ray itself.

    Args:
        address: None starts a private local instance (like `ray.init()`); "auto" joins the
            cluster this machine belongs to; "host:port" or "ray://host:port" joins that one.
        num_cpus: CPUs a local instance may use (None: all of them); ignored when joining.
    """
    ray = import_ray()
    if ray.is_initialized():  # a notebook or a test already set Ray up: use it as it is
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
        return True
    probe_address(address)
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as e:
        raise UserError(f"cannot join the Ray cluster at {address}: {e}") from None
    return True
