"""The SSRF policy: address classes, allowed networks, the creation-time URL check and the
run-time resolver (with stand-in DNS answers; real sockets are in tests/integration)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Any, Iterator

import pytest

from common.core import netguard
from common.core.netguard import GuardedResolver, Policy, TargetRefused, refused_reason, url_problem
from common.infra.config import Settings, load_settings
from common.infra.errors import ConfigError

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.1.1", "link-local"),
    ("100.64.0.1", "shared (carrier-grade NAT)"),
    ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("fc00::1", "private (unique local)"),
    ("fd00:ec2::254", "private (unique local)"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("::ffff:127.0.0.1", "leads to 127.0.0.1, a loopback"),
    ("::ffff:169.254.169.254", "leads to 169.254.169.254, a link-local"),
    ("2002:a00:1::1", "leads to 10.0.0.1, a private"),  # 6to4
    ("64:ff9b::a9fe:a9fe", "leads to 169.254.169.254"),  # NAT64
]


@pytest.fixture(autouse=True)
def _fresh_lookups() -> Iterator[None]:
    netguard.clear_lookup_cache()
    yield
    netguard.clear_lookup_cache()


def settings(**overrides: Any) -> Settings:
    return load_settings({}, **overrides)


@pytest.mark.parametrize("ip, category", REFUSED)
def test_non_public_addresses_are_refused_and_named(ip: str, category: str) -> None:
    reason = refused_reason(ip)
    assert reason is not None and category in reason
    assert reason.startswith(str(ipaddress.ip_address(ip)))


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"])
def test_public_addresses_are_allowed(ip: str) -> None:
    assert refused_reason(ip) is None


def test_allow_networks_open_exactly_what_they_hold() -> None:
    loop32 = (ipaddress.ip_network("127.0.0.1/32"),)
    assert refused_reason("127.0.0.1", loop32) is None
    assert refused_reason("::ffff:127.0.0.1", loop32) is None  # the same IPv4 socket address
    assert "loopback" in (refused_reason("127.0.0.2", loop32) or "")
    assert "loopback" in (refused_reason("::1", loop32) or "")
    private = (ipaddress.ip_network("10.1.0.0/16"),)
    assert refused_reason("10.1.200.3", private) is None
    assert "private" in (refused_reason("10.2.0.1", private) or "")
    assert "cloud metadata" in (refused_reason("169.254.169.254", private) or "")


def test_policy_parses_the_settings_once_and_names_a_bad_network() -> None:
    good = settings(http_allow_private=("10.0.0.0/8", "192.168.1.7/24"))
    policy = Policy.from_settings(good)
    assert policy.allow_networks == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.0/24"))
    assert Policy.from_settings(good) is policy
    with pytest.raises(ConfigError, match="CHRONOQ_HTTP_ALLOW_PRIVATE: 'ten' is not a network"):
        Policy.from_settings(settings(http_allow_private=("ten",)))


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://127.0.0.1:8080/x", "127.0.0.1 is a loopback address: refused unless CHRONOQ_HTTP_ALLOW_PRIVATE"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("https://[::ffff:10.0.0.1]/", "leads to 10.0.0.1, a private address"),
        ("http://localhost:8000/", "'localhost' is a loopback name"),
        ("http://api.LOCALHOST./", "'api.localhost' is a loopback name"),
        ("http://2130706433/", "legacy numeric form"),
        ("http://127.1/", "legacy numeric form"),
        ("http://0x7f.0.0.1/", "legacy numeric form"),
        ("ftp://example.com/", "only http and https"),
        ("http:///path", "no host"),
    ],
)
def test_url_problem_without_dns(url: str, expected: str) -> None:
    problem = url_problem(url, settings(), resolve=False)
    assert problem is not None and expected in problem


def test_url_problem_accepts_public_targets_and_allowed_private_ones() -> None:
    assert url_problem("https://8.8.8.8/hook", settings(), resolve=False) is None
    assert url_problem("https://hooks.example.com/x", settings(), resolve=False) is None
    opened = settings(http_allow_private=("127.0.0.1/32",))
    assert url_problem("http://127.0.0.1:9/", opened) is None
    assert url_problem("http://localhost:9/", opened, resolve=False) is None
    assert url_problem("http://127.0.0.2:9/", opened) is not None


def test_url_problem_applies_the_host_allow_list() -> None:
    listed = settings(http_allowed_hosts=("*.example.com",))
    assert url_problem("https://api.example.com/x", listed, resolve=False) is None
    assert url_problem("https://evil.com/x", listed, resolve=False) == (
        "host 'evil.com' is not allowed (CHRONOQ_HTTP_ALLOWED_HOSTS)"
    )
    # On the list, yet a literal non-public address: still refused.
    assert "loopback" in (url_problem("http://127.0.0.1/", settings(http_allowed_hosts=("127.0.0.1",))) or "")


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]], calls: list[str],
              delay: float = 0.0) -> None:
    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        calls.append(host)
        time.sleep(delay)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_url_problem_refuses_a_name_with_a_private_address(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    _fake_dns(monkeypatch, {"internal.example.com": ["8.8.8.8", "10.0.0.5"], "public.example.com": ["8.8.4.4"]}, calls)
    problem = url_problem("https://internal.example.com/x", settings())
    assert problem == (
        "host 'internal.example.com' resolves to a refused address (10.0.0.5 is a private address): "
        "refused unless CHRONOQ_HTTP_ALLOW_PRIVATE includes it"
    )
    assert url_problem("https://internal.example.com/x", settings(http_allow_private=("10.0.0.0/8",))) is None
    assert url_problem("https://public.example.com/x", settings()) is None
    # A name that does not resolve now is accepted: the executor checks it again when it runs.
    assert url_problem("https://not-yet.example.com/x", settings()) is None
    assert url_problem("https://internal.example.com/x", settings(), resolve=False) is None
    assert calls == ["internal.example.com", "public.example.com", "not-yet.example.com"]


def test_url_problem_looks_a_name_up_once_for_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    _fake_dns(monkeypatch, {"hooks.example.com": ["8.8.8.8"]}, calls)
    for _ in range(1000):
        assert url_problem("https://hooks.example.com/x", settings()) is None
    assert calls == ["hooks.example.com"]
    monkeypatch.setattr(netguard, "LOOKUP_TTL", 0.0)
    netguard.clear_lookup_cache()
    url_problem("https://hooks.example.com/x", settings())
    url_problem("https://hooks.example.com/x", settings())
    assert len(calls) == 3


def test_a_slow_lookup_does_not_hold_up_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    _fake_dns(monkeypatch, {"slow.example.com": ["10.0.0.1"]}, calls, delay=1.5)
    monkeypatch.setattr(netguard, "LOOKUP_TIMEOUT", 0.1)
    started = time.monotonic()
    assert url_problem("https://slow.example.com/", settings()) is None
    assert time.monotonic() - started < 1.0


class _Answers:
    """A stand-in for aiohttp's resolver."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.closed = False

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}
                for a in self.addresses]

    async def close(self) -> None:
        self.closed = True


def _resolve(resolver: GuardedResolver, host: str) -> list[str]:
    return [r["host"] for r in asyncio.run(resolver.resolve(host, 443))]


def test_guarded_resolver_keeps_only_allowed_addresses() -> None:
    mixed = GuardedResolver(Policy(), _Answers("10.0.0.7", "8.8.8.8", "169.254.169.254"))  # type: ignore[arg-type]
    assert _resolve(mixed, "hooks.example.com") == ["8.8.8.8"]
    policy = Policy(allow_networks=(ipaddress.ip_network("10.0.0.0/24"),))
    opened = GuardedResolver(policy, _Answers("10.0.0.7", "10.0.1.7"))  # type: ignore[arg-type]
    assert _resolve(opened, "hooks.example.com") == ["10.0.0.7"]


def test_guarded_resolver_refuses_when_nothing_is_left() -> None:
    inner = _Answers("127.0.0.1", "10.0.0.1")
    resolver = GuardedResolver(Policy(), inner)  # type: ignore[arg-type]
    with pytest.raises(TargetRefused, match=r"'rebound.example.com' resolves to a refused address \(127.0.0.1 is"):
        _resolve(resolver, "rebound.example.com")
    listed = GuardedResolver(Policy(allowed_hosts=("*.example.com",)), _Answers("8.8.8.8"))  # type: ignore[arg-type]
    with pytest.raises(TargetRefused, match="'evil.com' is not allowed"):
        _resolve(listed, "evil.com")
    assert _resolve(listed, "api.example.com.") == ["8.8.8.8"]
    asyncio.run(resolver.close())
    assert inner.closed
