"""Which callback URLs a webhook may go to: http(s), to a public address unless WEBHOOK_ALLOW_PRIVATE_NETWORKS.

A callback URL is checked at submit (a 422 for one on loopback, a private, link-local or other non-global network,
which covers the cloud metadata addresses) and again at each delivery, since what a name resolves to can change.
A delivery then connects to the address it checked, not to whatever a second lookup returns
(:meth:`Destination.request_url`), so a name cannot pass the check and then point somewhere else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from jobs.errors import InvalidJob


class CallbackRefused(Exception):
    """The URL is not one a webhook may go to; the message says why."""


def check_syntax(url: str) -> tuple[str, str, int]:
    """The scheme, host and port of ``url``; CallbackRefused unless it is a plain http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise CallbackRefused("only http:// and https:// URLs")
    if not parts.hostname:
        raise CallbackRefused("the URL names no host")
    if parts.fragment:
        raise CallbackRefused("the URL has a #fragment")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


@dataclass(frozen=True)
class Destination:
    """A checked callback URL and the address a delivery connects to."""

    url: str
    host: str
    address: str

    def request_url(self) -> str:
        """``url`` with its host replaced by the checked address (the Host header and TLS name stay ``host``)."""
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if ":" in self.address else self.address
        netloc = literal if parts.port is None else f"{literal}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))


async def resolve(url: str, allow_private: bool, timeout_s: float) -> Destination:
    """``url`` resolved and checked; CallbackRefused naming the reason. A name with no answer in ``timeout_s`` does
    not resolve: a slow resolver must not hold a submit or a delivery slot."""
    scheme, host, port = check_syntax(url)
    try:
        answers = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout_s)
    except TimeoutError:
        raise CallbackRefused(f"its host {host!r} does not resolve (no answer in {timeout_s:g} s)") from None
    except OSError as exc:
        raise CallbackRefused(f"its host {host!r} does not resolve ({exc.strerror or exc})") from None
    addresses = [str(answer[4][0]).split("%")[0] for answer in answers]
    if not allow_private:
        for address in addresses:
            if _refused_address(ipaddress.ip_address(address)):
                raise CallbackRefused(f"its host {host!r} resolves to {address}, a loopback, private, link-local or "
                                      "other non-public address (WEBHOOK_ALLOW_PRIVATE_NETWORKS=true allows it)")
    return Destination(url, host, addresses[0])


async def check_at_submit(urls: list[str | None], allow_private: bool, field: str, resolve_timeout_s: float,
                          deadline_s: float) -> None:
    """422 naming the first of ``urls`` (``field`` formats its index; None: a job without one) that a webhook may
    not go to. Each distinct host is resolved once (a bulk submit names up to a thousand URLs, mostly on the same
    few hosts), each lookup within ``resolve_timeout_s`` and all of them within ``deadline_s``, so a submit never
    waits on a slow resolver for long."""
    checked: set[str] = set()
    index = 0
    try:
        async with asyncio.timeout(deadline_s):
            for index, url in enumerate(urls):
                if url is None:
                    continue
                try:
                    host = check_syntax(url)[1]
                    if host not in checked:
                        await resolve(url, allow_private, resolve_timeout_s)
                        checked.add(host)
                except CallbackRefused as exc:
                    raise InvalidJob(f"{field.format(index=index)}callback_url: {exc}") from None
    except TimeoutError:
        raise InvalidJob(f"{field.format(index=index)}callback_url: the callback URLs' hosts did not all resolve in "
                         f"{deadline_s:g} s ({len(checked)} distinct hosts checked); name fewer hosts") from None
