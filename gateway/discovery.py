"""From the ``WORKERS`` setting to backend URLs.

An entry ``host:port`` whose host is a name resolving to several addresses
(``docker compose up --scale worker=4`` gives one A record per replica)
becomes one backend per address. Names are re-resolved on an interval; when a
look-up fails the last answer is kept.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

#: ``resolve(host, port) -> addresses``
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_ipv4(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, family=socket.AF_INET, type=socket.SOCK_STREAM
    )
    return sorted({info[4][0] for info in infos})


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class WorkerDiscovery:
    """Expands WORKERS entries into ``(url, source)`` pairs."""

    def __init__(self, entries: list[str], resolver: Resolver = resolve_ipv4) -> None:
        self._entries = [entry.removeprefix("http://").rstrip("/") for entry in entries]
        self._resolver = resolver
        self._last: dict[str, list[str]] = {}

    async def expand(self) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        for entry in self._entries:
            host, _, port = entry.rpartition(":")
            for address in await self._addresses(host, int(port)):
                pairs.append((f"http://{address}:{port}", entry))
        return pairs

    async def _addresses(self, host: str, port: int) -> list[str]:
        if _is_ip(host):
            return [host]
        try:
            addresses = await self._resolver(host, port)
        except OSError as exc:
            log.warning("could not resolve %s (%s); keeping %s", host, exc, self._last.get(host, []))
            return self._last.get(host, [])
        self._last[host] = addresses
        return addresses
