"""Shared pieces of the benchmarks: loopback receivers and dispatcher options.

Receivers run in their own processes (nginx when installed, else aiohttp) so they
compete with the code under test only for CPU, as a real receiver on the same box would.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import webhook_dispatch as wd


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"receiver did not start on port {port}")


@contextlib.contextmanager
def nginx_receiver(directory: Path) -> Iterator[str]:
    """nginx answering 200 "ok" to every POST; yields its base URL."""
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(
        textwrap.dedent(
            f"""
            worker_processes 1;
            daemon off;
            pid {directory}/nginx.pid;
            error_log {directory}/error.log crit;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {directory};
                keepalive_requests 1000000;
                keepalive_timeout 60s;
                server {{
                    listen 127.0.0.1:{port};
                    location / {{ return 200 "ok"; }}
                }}
            }}
            """
        )
    )
    process = subprocess.Popen(["nginx", "-c", str(config), "-p", str(directory)])
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


PYTHON_RECEIVER = textwrap.dedent(
    """
    import sys
    from aiohttp import web

    async def ok(request):
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", ok)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
    """
)


@contextlib.contextmanager
def python_receiver() -> Iterator[str]:
    """A small aiohttp receiver in another process; yields its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", PYTHON_RECEIVER, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def receiver(directory: Path, *, prefer_nginx: bool = True) -> Iterator[tuple[str, str]]:
    """The fastest receiver available: yields (base URL, its name)."""
    if prefer_nginx and shutil.which("nginx"):
        with nginx_receiver(directory) as base:
            yield base, "nginx"
    else:
        with python_receiver() as base:
            yield base, "aiohttp (python)"


def dispatcher_options(**extra: Any) -> dict[str, Any]:
    """Options every benchmark dispatcher uses: loopback receivers must be allowed."""
    return {"allow_private_networks": True, "concurrency": 64, **extra}


def machine() -> str:
    import os
    import platform
    import sqlite3

    return (
        f"machine: {os.cpu_count()} cpus, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, webhook_dispatch {wd.__version__}"
    )
