"""The test suite's network block: socket connects, sends and name lookups outside loopback raise."""

from __future__ import annotations

import socket
from typing import Any

_LOCAL = ("localhost", "::1", "0.0.0.0", "")


def is_local(host: Any) -> bool:
    """True for loopback addresses, local names and unix-socket paths."""
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    return host.startswith("127.") or host in _LOCAL or host.startswith("/") or host.startswith("\0")


def _host(address: Any) -> Any:
    return address[0] if isinstance(address, tuple) else address


def _refuse(address: Any) -> None:
    raise RuntimeError(f"test tried to reach the network: {address}")


def guards() -> dict[tuple[Any, str], Any]:
    """(owner, attribute) -> replacement for every entry point that could reach another host."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto, real_getaddrinfo = socket.socket.sendto, socket.getaddrinfo

    def connect(self, address):
        return real_connect(self, address) if is_local(_host(address)) else _refuse(address)

    def connect_ex(self, address):
        return real_connect_ex(self, address) if is_local(_host(address)) else _refuse(address)

    def sendto(self, data, *args):
        address = args[-1]
        return real_sendto(self, data, *args) if is_local(_host(address)) else _refuse(address)

    def getaddrinfo(host, *args, **kwargs):
        return real_getaddrinfo(host, *args, **kwargs) if is_local(host) or host is None else _refuse(host)

    return {(socket.socket, "connect"): connect, (socket.socket, "connect_ex"): connect_ex,
            (socket.socket, "sendto"): sendto, (socket, "getaddrinfo"): getaddrinfo}


def block_network() -> None:
    """Install the guards for the rest of the process (subprocesses)."""
    for (owner, name), fn in guards().items():
        setattr(owner, name, fn)
