"""Which addresses ``file_url`` fetches and webhook deliveries may connect to (SSRF policy).

The check runs in the connector's ``socket_factory``, so it sees the real address of every
connection, IP literals and redirect hops included (a resolver-only check is bypassed by literals).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not reachable unless allowed, on top of everything ``is_global`` rejects: the stdlib calls several of
# these global (multicast, NAT64, 6to4, IPv4-compatible, Teredo) and misclassifies others before 3.11.10.
DENIED_NETWORKS: tuple[Network, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",
        "255.255.255.255/32",
        "::/128",
        "::1/128",
        "::/96",  # IPv4-compatible
        "::ffff:0:0/96",  # IPv4-mapped (also unwrapped below)
        "64:ff9b::/96",  # NAT64
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/32",  # Teredo
        "2001:db8::/32",
        "2002::/16",  # 6to4
        "fc00::/7",  # unique local, incl. fd00:ec2::254 metadata
        "fe80::/10",
        "ff00::/8",  # multicast
    )
)


class AddressDenied(PermissionError):
    """Raised from the socket factory: aiohttp reports it as a connection error before any byte is sent."""


def denial_reason(address: IPAddress, allowed: Sequence[Network]) -> str | None:
    """Why ``address`` may not be reached, or None if it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in allowed):
        return None
    for network in DENIED_NETWORKS:
        if address.version == network.version and address in network:
            return f"{address} is in the non-public range {network}"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` spells literally, or None for a name.

    Beyond standard literals this accepts every legacy IPv4 form that ``getaddrinfo`` (``inet_aton``)
    turns into an address: ``127.1``, ``2130706433``, ``0x7f000001``, ``017700000001``, ``0177.0.0.1``.
    """
    host = host.removeprefix("[").removesuffix("]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


async def host_denial_reason(
    host: str, port: int, allowed: Sequence[Network], resolve_timeout_s: float = 2.0
) -> str | None:
    """Early check of a URL's host (literal in any spelling, or a name and every address it resolves to).

    Only for a clear 4xx before anything is accepted: a name may resolve differently later (DNS
    rebinding), so the socket factory below still checks every real connection. A name that does not
    resolve now passes here (nothing can connect to it; the connect-time check decides later).
    """
    literal = literal_address(host)
    if literal is not None:
        return denial_reason(literal, allowed)
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), resolve_timeout_s
        )
    except (OSError, TimeoutError, UnicodeError):
        return None
    for *_, sockaddr in infos:
        reason = denial_reason(ipaddress.ip_address(sockaddr[0]), allowed)
        if reason is not None:
            return f"{host} resolves to {sockaddr[0]}: {reason}"
    return None


def guarded_socket_factory(allowed: Sequence[Network]) -> Any:
    """A ``TCPConnector(socket_factory=...)`` that refuses denied addresses at connect time."""

    def factory(addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _canonname, sockaddr = addr_info
        reason = denial_reason(ipaddress.ip_address(sockaddr[0]), allowed)
        if reason is not None:
            raise AddressDenied(f"connection refused by policy: {reason}")
        return socket.socket(family=family, type=type_, proto=proto)

    return factory
