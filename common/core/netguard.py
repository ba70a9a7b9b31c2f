"""Which network targets ``http`` jobs may reach (SSRF policy).

By default a job may call public addresses only: loopback, private, link-local (cloud metadata
at 169.254.169.254), shared, multicast, reserved and documentation ranges are refused unless
``CHRONOQ_HTTP_ALLOW_PRIVATE`` names a network that holds the address. Names are checked twice:
when a job is created (:func:`url_problem`, a best-effort DNS lookup) and when it runs
(:class:`GuardedResolver`, whose checked answers are the very addresses aiohttp connects to, so
a name that changes its answer in between - DNS rebinding - gains nothing).
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import functools
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Union
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from common.infra.config import Settings
from common.infra.errors import ChronoqError, ConfigError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: Appended to every address refusal: the one setting that opens it.
ALLOW_HINT = "refused unless CHRONOQ_HTTP_ALLOW_PRIVATE includes it"

_n = ipaddress.ip_network
#: Refused ranges with the name a refusal gives; the first match names it, so the narrow
#: entries come before the wide ones around them.
_CATEGORIES: tuple[tuple[IPNetwork, str], ...] = (
    (_n("0.0.0.0/32"), "an unspecified address"),
    (_n("0.0.0.0/8"), "a 'this network' address"),
    (_n("127.0.0.0/8"), "a loopback address"),
    (_n("169.254.169.254/32"), "a link-local address (the cloud metadata endpoint)"),
    (_n("169.254.0.0/16"), "a link-local address"),
    (_n("10.0.0.0/8"), "a private address"),
    (_n("172.16.0.0/12"), "a private address"),
    (_n("192.168.0.0/16"), "a private address"),
    (_n("100.64.0.0/10"), "a shared (carrier-grade NAT) address"),
    (_n("192.0.0.0/24"), "an IETF protocol assignment address"),
    (_n("192.0.2.0/24"), "a documentation address"),
    (_n("198.51.100.0/24"), "a documentation address"),
    (_n("203.0.113.0/24"), "a documentation address"),
    (_n("198.18.0.0/15"), "a benchmarking address"),
    (_n("224.0.0.0/4"), "a multicast address"),
    (_n("255.255.255.255/32"), "the broadcast address"),
    (_n("240.0.0.0/4"), "a reserved address"),
    (_n("::/128"), "an unspecified address"),
    (_n("::1/128"), "a loopback address"),
    (_n("fe80::/10"), "a link-local address"),
    (_n("fec0::/10"), "a site-local address"),
    (_n("fc00::/7"), "a private (unique local) address"),
    (_n("ff00::/8"), "a multicast address"),
    (_n("2001:db8::/32"), "a documentation address"),
    (_n("2001:2::/48"), "a benchmarking address"),
    (_n("100::/64"), "a discard-only address"),
)
#: NAT64's well-known prefix: ipaddress calls it global, yet a gateway forwards it to the IPv4
#: address in its last 32 bits, which may well be internal.
_NAT64 = _n("64:ff9b::/96")

#: Creation-time lookups: a name's addresses are kept this long, so that a batch of jobs for one
#: host costs one lookup, and no lookup may hold up a request longer than the timeout.
LOOKUP_TTL = 5.0
LOOKUP_TIMEOUT = 2.0
_LOOKUP_CACHE_SIZE = 1024


def host_allowed(host: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``host`` matches one of ``patterns`` (fnmatch, case-insensitive); no patterns
    means any host."""
    if not patterns:
        return True
    host = host.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in patterns)


class TargetRefused(ChronoqError):
    """The policy refuses this target (CHRONOQ_HTTP_ALLOWED_HOSTS / CHRONOQ_HTTP_ALLOW_PRIVATE)."""


def _category(address: IPAddress) -> str | None:
    for network, name in _CATEGORIES:
        if address.version == network.version and address in network:
            return name
    # ipaddress counts multicast as global (it is routable); for a job it is never a target.
    if address.is_multicast:
        return "a multicast address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def _embedded(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to (IPv4-mapped, 6to4, NAT64), if any."""
    if address.version != 6:
        return None
    assert isinstance(address, ipaddress.IPv6Address)
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _inside(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def refused_reason(ip: IPAddress | str, allow_networks: Iterable[IPNetwork] = ()) -> str | None:
    """Why ``ip`` may not be called (e.g. "127.0.0.1 is a loopback address"), or None when it
    is public or inside one of ``allow_networks``. Raises ValueError if ``ip`` is no address."""
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    networks = tuple(allow_networks)
    inner = _embedded(address)
    if _inside(address, networks) or (inner is not None and _inside(inner, networks)):
        return None
    if inner is not None and (inner_category := _category(inner)) is not None:
        return f"{address} leads to {inner}, {inner_category}"
    category = _category(address)
    return f"{address} is {category}" if category is not None else None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _numeric_legacy(host: str) -> bool:
    """Whether ``host`` is an IPv4 address in a legacy form (2130706433, 127.1, 0x7f.0.0.1)
    that the resolver would turn into an address without any lookup."""
    if not host or not all(c in "0123456789abcdefx." for c in host):
        return False
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def _spellings(host: str) -> tuple[str, ...]:
    """``host`` and, for an IDNA name, its Unicode form: the API sees what the user wrote,
    the executor's resolver the ASCII form, and a pattern may be written either way."""
    if "xn--" not in host.lower():
        return (host,)
    try:
        return (host, host.encode("ascii").decode("idna"))
    except UnicodeError:
        return (host,)


def _is_localhost(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


_LOOPBACKS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


@dataclass(frozen=True)
class Policy:
    """The settings' SSRF rules, parsed once: host patterns and the networks allowed although
    not public."""

    allowed_hosts: tuple[str, ...] = ()
    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy of ``settings``; raises ConfigError on a bad CHRONOQ_HTTP_ALLOW_PRIVATE."""
        return _policy(tuple(settings.http_allowed_hosts), tuple(settings.http_allow_private))

    def host_problem(self, host: str) -> str | None:
        """Why ``host`` is off the allow-list, or None."""
        if any(host_allowed(name, self.allowed_hosts) for name in _spellings(host)):
            return None
        return f"host {host!r} is not allowed (CHRONOQ_HTTP_ALLOWED_HOSTS)"

    def address_problem(self, ip: IPAddress | str) -> str | None:
        """Why the address ``ip`` is refused (with the setting that would allow it), or None."""
        reason = refused_reason(ip, self.allow_networks)
        return f"{reason}: {ALLOW_HINT}" if reason else None

    def resolved_problem(self, host: str, ip: IPAddress | str) -> str | None:
        """Why ``host``, resolving to ``ip``, is refused, or None."""
        reason = refused_reason(ip, self.allow_networks)
        return f"host {host!r} resolves to a refused address ({reason}): {ALLOW_HINT}" if reason else None

    def static_problem(self, url: str) -> str | None:
        """What is wrong with ``url`` without any DNS lookup: scheme, host pattern, an IP
        literal that is refused, a localhost name."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").rstrip(".")
        except ValueError as exc:
            return f"not a valid URL: {exc}"
        if parts.scheme.lower() not in ("http", "https"):
            return f"only http and https URLs may be called, not {parts.scheme or 'a relative URL'!r}"
        if not host:
            return "the URL has no host"
        return self.host_problem(host) or self.literal_problem(host)

    def literal_problem(self, host: str) -> str | None:
        """Why ``host`` is refused for what it is, without DNS: a refused IP literal, a legacy
        numeric form, a localhost name; None for any other name."""
        host = host.rstrip(".").lower()
        address = _literal(host)
        if address is not None:
            return self.address_problem(address)
        if ":" in host:
            return f"host {host!r} is not a valid IPv6 address"
        if _numeric_legacy(host):
            return f"host {host!r} is an IPv4 address in a legacy numeric form: write it as a.b.c.d"
        if _is_localhost(host) and all(refused_reason(ip, self.allow_networks) for ip in _LOOPBACKS):
            return f"host {host!r} is a loopback name: {ALLOW_HINT}"
        return None

    def url_problem(self, url: str, *, resolve: bool = True) -> str | None:
        """:meth:`static_problem`, then (with ``resolve``) whether the name's current addresses
        include a refused one. A name that does not resolve now is accepted."""
        problem = self.static_problem(url)
        if problem or not resolve:
            return problem
        host = (urlsplit(url).hostname or "").rstrip(".")
        if _literal(host) is not None:
            return None
        for address in lookup(host):
            problem = self.resolved_problem(host, address)
            if problem:
                return problem
        return None


@functools.lru_cache(maxsize=16)
def _policy(hosts: tuple[str, ...], private: tuple[str, ...]) -> Policy:
    networks = []
    for cidr in private:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError as exc:
            raise ConfigError(f"CHRONOQ_HTTP_ALLOW_PRIVATE: {cidr!r} is not a network in CIDR form ({exc})") from None
    return Policy(hosts, tuple(networks))


def url_problem(url: str, settings: Settings, *, resolve: bool = True) -> str | None:
    """Why an ``http`` job may not call ``url`` under ``settings`` (the text the API answers
    on ``payload.url``), or None. See :meth:`Policy.url_problem`."""
    return Policy.from_settings(settings).url_problem(url, resolve=resolve)


_lookup_cache: dict[str, tuple[float, tuple[str, ...]]] = {}
_lookup_lock = threading.Lock()
_lookup_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _getaddrinfo(host: str) -> tuple[str, ...]:
    infos = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


def lookup(host: str) -> tuple[str, ...]:
    """The addresses ``host`` resolves to now; () when it does not resolve within
    LOOKUP_TIMEOUT. Answers (empty ones too) are kept LOOKUP_TTL seconds."""
    global _lookup_pool
    now = time.monotonic()
    with _lookup_lock:
        hit = _lookup_cache.get(host)
        if hit is not None and hit[0] > now:
            return hit[1]
        if _lookup_pool is None:
            _lookup_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="netguard-dns")
        future = _lookup_pool.submit(_getaddrinfo, host)
    try:
        addresses = future.result(timeout=LOOKUP_TIMEOUT)
    except (concurrent.futures.TimeoutError, OSError, UnicodeError, ValueError):
        # A slow or failing lookup must not hold up the API; the executor checks again anyway.
        future.cancel()
        addresses = ()
    with _lookup_lock:
        if len(_lookup_cache) >= _LOOKUP_CACHE_SIZE:
            _lookup_cache.clear()
        _lookup_cache[host] = (time.monotonic() + LOOKUP_TTL, addresses)
    return addresses


def clear_lookup_cache() -> None:
    """Forget every cached lookup (tests, or after a DNS change that must count at once)."""
    with _lookup_lock:
        _lookup_cache.clear()


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, less the refused addresses: raises :class:`TargetRefused` when none
    is left. The connector connects to the addresses returned here and nothing else (TLS still
    checks the certificate against the host name). aiohttp does not call a resolver for an IP
    literal, nor close one it was given: check literals and close this yourself."""

    def __init__(self, policy: Policy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The allowed addresses of ``host``."""
        name = host.rstrip(".")
        problem = self.policy.host_problem(name)
        if problem:
            raise TargetRefused(problem)
        if self._inner is None:
            self._inner = DefaultResolver()  # created here: it binds to the running loop
        kept: list[ResolveResult] = []
        refused: list[str] = []
        for result in await self._inner.resolve(host, port, family):
            reason = self.policy.resolved_problem(name, result["host"])
            if reason:
                refused.append(reason)
            else:
                kept.append(result)
        if not kept:
            if refused:
                raise TargetRefused(refused[0])
            raise OSError(None, f"no address for {name!r}")
        return kept

    async def close(self) -> None:
        """Close the wrapped resolver."""
        if self._inner is not None:
            await self._inner.close()
