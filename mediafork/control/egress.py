"""Where status callbacks may be sent: the egress policy. Sans-I/O: no sockets, no DNS.

A status-callback URL is chosen by an API client, and the daemon then sends an HTTP request
to it from inside the operator's network. Without a policy that is a blind SSRF: a client can
aim callbacks at the cloud metadata service, at the daemon's own API, or at any service on
loopback or the private network. :class:`EgressPolicy` decides, for a URL (at create time and
again before each delivery) and for each address a host name resolves to (at delivery time,
by :mod:`.callbacks`), whether the request may go there.

Rules, in the order they are applied (the first that matches decides):

1. The URL carries no credentials (``user:pass@``): receivers authenticate callbacks by
   ``X-Twilio-Signature``, and a password in a URL ends up in the store and in the logs.
2. Never, whatever ``allow`` says: mediafork's own listeners (exact address and port; for a
   wildcard listen, that port on any local address), cloud metadata addresses and names
   (:data:`METADATA_ADDRESSES`, :data:`METADATA_NAMES`), unspecified addresses (0.0.0.0/8,
   ``::``), multicast, and 240.0.0.0/4 (reserved, with the broadcast address). None of
   these is ever a legitimate application endpoint.
3. Host names: the most specific matching ``allow`` / ``deny`` name entry decides (an exact
   name beats a ``*.suffix`` wildcard, a longer suffix beats a shorter one, deny wins a tie).
   A name explicitly allowed is trusted for whatever it resolves to, except rule 2.
4. Addresses: the longest matching prefix among the ``allow`` and ``deny`` CIDRs and the
   default denials (:data:`DEFAULT_DENY`: link-local 169.254.0.0/16 and fe80::/10) decides;
   on a tie ``deny`` beats ``allow``, which beats a default denial. So ``deny = ["10.0.0.0/8"]`` with ``allow = ["10.20.0.0/16"]`` opens
   exactly the application network, and ``allow = ["10.0.0.0/8"]`` with
   ``deny = ["10.20.5.0/24"]`` closes one subnet of it.
5. Anything else is allowed. Loopback and private networks stay allowed by default: sidecar
   applications commonly listen on loopback or the pod network, and closing them would break
   working deployments; ``deny = ["127.0.0.0/8", "::1/128"]`` closes loopback.

Numeric hosts are read the way the C library reads them: ``inet_aton`` accepts ``0``,
``2130706433``, ``0x7f000001``, ``0x7f.1``, ``017700000001`` and ``127.1``, so those are IP
addresses, not host names, and are checked as such. An IPv4-mapped IPv6 address is checked as
the IPv4 address it is; an IPv6 address embedding an IPv4 one (NAT64 ``64:ff9b::/96``, 6to4,
IPv4-compatible) is checked as both. A numeric host not in dotted-quad form is refused even
when its address is allowed: the HTTP client refuses to connect to it, so the callback could
never be delivered.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from yarl import URL

__all__ = [
    "DEFAULT_DENY",
    "METADATA_ADDRESSES",
    "METADATA_NAMES",
    "Decision",
    "EgressPolicy",
    "IPAddress",
    "Listener",
    "parse_ip_host",
    "parse_rule",
]

IPAddress = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean…
    "169.254.170.2",  # AWS ECS task metadata and credentials
    "169.254.170.23",  # AWS EKS pod identity
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",  # Oracle Cloud (legacy)
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "fd00:ec2::23",  # AWS EKS pod identity over IPv6
    "fd20:ce::254",  # GCP metadata over IPv6
))
"""Cloud instance-metadata endpoints: they hand out credentials to whoever asks."""

METADATA_NAMES: frozenset[str] = frozenset({
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
})
"""Names the clouds' resolvers map to the metadata service."""

DEFAULT_DENY: tuple[Network, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
)
"""Denied unless an ``allow`` entry is more specific: link-local (where metadata lives)."""

_NEVER: tuple[tuple[Network, str], ...] = (
    (ipaddress.ip_network("0.0.0.0/8"), "an unspecified address"),
    (ipaddress.ip_network("::/128"), "an unspecified address"),
    (ipaddress.ip_network("224.0.0.0/4"), "a multicast address"),
    (ipaddress.ip_network("ff00::/8"), "a multicast address"),
    (ipaddress.ip_network("240.0.0.0/4"), "a reserved or broadcast address"),
)

# IPv6 prefixes whose addresses carry an IPv4 address in their last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

# A DNS name as a rule: LDH labels, optionally "*." in front (a suffix wildcard).
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_NAME_RULE = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")
_INET_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


def parse_ip_host(host: str) -> IPAddress | None:
    """The address *host* denotes if it is numeric (any form ``inet_aton`` accepts, or an
    IPv6 literal with or without brackets), else None. IPv4-mapped IPv6 comes back as IPv4."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in text:
        try:
            v6 = IPv6Address(text)
        except ValueError:
            return None
        return v6.ipv4_mapped or v6
    return _inet_aton(text)


def _inet_aton(text: str) -> IPv4Address | None:
    """glibc ``inet_aton``: 1 to 4 parts, each decimal, octal (leading 0) or hex (0x); the
    last part fills the remaining bytes."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_ATON_PART.fullmatch(p) for p in parts):
        return None
    values = []
    for part in parts:
        if part[:2] in ("0x", "0X"):
            values.append(int(part[2:] or "0", 16))
        elif part.startswith("0"):
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *leading, last = values
    if any(v > 255 for v in leading) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return IPv4Address(number)


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address routes to, for the translation schemes that have one."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def parse_rule(text: str) -> Network | str:
    """One ``allow`` / ``deny`` entry: a CIDR or address (returned as a network), or a host
    name, exact or ``*.suffix`` (returned lower-cased). Raises ValueError saying why not."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("must be a non-empty string")
    entry = text.strip().lower().rstrip(".")
    if "/" in entry or ":" in entry or parse_ip_host(entry) is not None:
        try:
            return ipaddress.ip_network(entry.strip("[]"), strict=True)
        except ValueError as exc:
            raise ValueError(f"not a CIDR ({exc})") from None
    if not _NAME_RULE.fullmatch(entry) or len(entry) > 253:
        raise ValueError("not a CIDR, a host name or *.suffix")
    return entry


@dataclass(frozen=True)
class Listener:
    """A socket mediafork listens on; an unspecified address means every local address."""

    address: IPAddress
    port: int

    @classmethod
    def of(cls, host: str, port: int) -> Listener:
        address = parse_ip_host(host)
        if address is None:
            raise ValueError(f"listener address {host!r} is not an IP address")
        return cls(address, port)


@dataclass(frozen=True)
class Decision:
    """The verdict; ``reason`` completes "…is not allowed: " and is safe to show and log
    (it names hosts and addresses, never credentials, paths or queries)."""

    allowed: bool
    reason: str = ""
    trusted_name: bool = False
    """The host name matched an ``allow`` entry: its addresses skip rule 4 (not rule 2)."""


ALLOWED = Decision(True)


def _loopback_only(address: IPAddress) -> bool:
    return address.is_loopback


@dataclass(frozen=True)
class EgressPolicy:
    """The ``[callbacks] allow`` / ``deny`` rules plus mediafork's own listeners; immutable.

    *is_local* answers "is this address one of this machine's?" for wildcard listeners; it
    is injected by the daemon (the default, loopback only, needs no I/O).
    """

    allow_networks: tuple[Network, ...] = ()
    deny_networks: tuple[Network, ...] = ()
    allow_names: tuple[str, ...] = ()
    deny_names: tuple[str, ...] = ()
    listeners: frozenset[Listener] = frozenset()
    is_local: Callable[[IPAddress], bool] = dataclasses.field(
        default=_loopback_only, compare=False, repr=False)

    @classmethod
    def from_rules(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> EgressPolicy:
        """Build from config entries; ValueError names the first bad one (``deny[2]: …``)."""
        split: dict[str, tuple[list[Network], list[str]]] = {}
        for key, entries in (("allow", allow), ("deny", deny)):
            networks: list[Network] = []
            names: list[str] = []
            for index, entry in enumerate(entries):
                try:
                    rule = parse_rule(entry)
                except ValueError as exc:
                    raise ValueError(f"{key}[{index}]: {exc}") from None
                if isinstance(rule, str):
                    names.append(rule)
                else:
                    networks.append(rule)
            split[key] = (networks, names)
        return cls(allow_networks=tuple(split["allow"][0]), deny_networks=tuple(split["deny"][0]),
                   allow_names=tuple(split["allow"][1]), deny_names=tuple(split["deny"][1]))

    def with_listeners(self, listeners: Iterable[Listener],
                       is_local: Callable[[IPAddress], bool] | None = None) -> EgressPolicy:
        """A copy that also refuses *listeners* (added to those already known)."""
        return dataclasses.replace(self, listeners=self.listeners | frozenset(listeners),
                                   is_local=is_local or self.is_local)

    # -- URLs ---------------------------------------------------------------------------

    def check_url(self, url: str) -> Decision:
        """Everything that can be decided from the URL alone (no DNS): credentials, then an
        IP host against every address rule, or a host name against the name rules."""
        try:
            parsed = URL(url)
            host, port = parsed.raw_host, parsed.port
        except (ValueError, TypeError):
            return Decision(False, "it is not a valid URL")
        if parsed.raw_user is not None or parsed.raw_password is not None or "@" in (
                parsed.raw_authority or ""):
            return Decision(False, "it carries credentials (user:password@); receivers "
                                   "authenticate callbacks by X-Twilio-Signature")
        if not host or port is None:
            return Decision(False, "it has no host")
        address = parse_ip_host(host)
        if address is None:
            return self.check_name(host)
        decision = self.check_address(address, port)
        if not decision.allowed:
            return decision
        if ":" not in host and host != str(address):
            return Decision(False, f"its host {host} is the IPv4 address {address} written in "
                                   f"a non-standard form; write {address}")
        return decision

    def check_name(self, host: str) -> Decision:
        """Rules 2-3 for a host name (no DNS): metadata names, then ``allow`` / ``deny``."""
        name = host.lower().rstrip(".")
        if name in METADATA_NAMES:
            return Decision(False, f"{name} is a cloud metadata service name")
        allowed = _best_name_match(name, self.allow_names)
        denied = _best_name_match(name, self.deny_names)
        if denied is not None and (allowed is None or denied[0] >= allowed[0]):
            return Decision(False, f"{name} matches the [callbacks] deny entry {denied[1]}")
        if allowed is not None:
            return Decision(True, trusted_name=True)
        return ALLOWED

    # -- addresses ----------------------------------------------------------------------

    def check_address(self, address: IPAddress, port: int, *,
                      trusted_name: bool = False) -> Decision:
        """Rules 2 and 4 for an address the request would connect to (*port* for the
        listener rule); *trusted_name* skips rule 4 (see :meth:`check_name`)."""
        if isinstance(address, IPv6Address):
            if address.ipv4_mapped is not None:
                return self.check_address(address.ipv4_mapped, port, trusted_name=trusted_name)
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                inner = self.check_address(embedded, port, trusted_name=trusted_name)
                if not inner.allowed:
                    return Decision(False, f"{address} embeds {embedded}, and {inner.reason}")
        if self._is_own_listener(address, port):
            return Decision(False, f"{_host_port(address, port)} is one of mediafork's own "
                                   "listening sockets")
        if address in METADATA_ADDRESSES:
            return Decision(False, f"{address} is a cloud metadata service address")
        for network, what in _NEVER:
            if address in network:
                return Decision(False, f"{address} is {what}")
        if trusted_name:
            return ALLOWED
        # Longest prefix wins; on equal prefixes the operator's deny beats their allow, which
        # beats a default denial (so allow = ["169.254.0.0/16"] does open link-local).
        best: tuple[int, int, Network] | None = None
        for networks, rank in ((DEFAULT_DENY, 0), (self.allow_networks, 1),
                               (self.deny_networks, 2)):
            for network in networks:
                if address.version != network.version or address not in network:
                    continue
                if best is None or (network.prefixlen, rank) > best[:2]:
                    best = (network.prefixlen, rank, network)
        if best is None or best[1] == 1:
            return ALLOWED
        if best[1] == 0:
            return Decision(False, f"{address} is link-local ({best[2]}, denied by default)")
        return Decision(False, f"{address} is in the [callbacks] deny entry {best[2]}")

    def _is_own_listener(self, address: IPAddress, port: int) -> bool:
        for listener in self.listeners:
            if listener.port != port:
                continue
            if listener.address == address:
                return True
            if listener.address.is_unspecified and (
                    address.is_unspecified or address.is_loopback or self.is_local(address)):
                return True
        return False


def _best_name_match(name: str, rules: Iterable[str]) -> tuple[int, str] | None:
    """(specificity, rule) of the most specific rule matching *name*: an exact name beats any
    wildcard; among wildcards, the longer suffix."""
    best: tuple[int, str] | None = None
    for rule in rules:
        if rule.startswith("*."):
            if not name.endswith(rule[1:]):
                continue
            score = len(rule)
        elif rule == name:
            score = 1 << 16
        else:
            continue
        if best is None or score > best[0]:
            best = (score, rule)
    return best


def _host_port(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
