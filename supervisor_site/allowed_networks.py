"""ENVIRONMENT_ALLOWED_NETWORKS: where an environment's URLs may point, hence where the
supervisor's proxy may connect (docs/configuration.md, docs/security.md).

Entries are CIDR networks (or single addresses) and host names. A URL whose host is a
literal IP address is allowed when a network holds it; a URL whose host is a name is allowed
when that name is listed, or when a listed ``.suffix`` ends it (``.workers.internal``).
Names are never resolved to check them against the networks: the answer would be whatever
the resolver says at that moment (and not necessarily what the proxy resolves later), so a
name is trusted only because the operator listed it. An empty list allows every host.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# RFC 1123 labels, plus ``_`` (compose service names such as worker_a); a leading dot marks a
# suffix entry.
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_RE = re.compile(rf"^\.?{_LABEL}(\.{_LABEL})*$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AllowedNetworks:
    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, items: list[str]) -> AllowedNetworks:
        """From the variable's comma-separated items; raises ValueError naming a bad one."""
        networks: list[Network] = []
        hosts: set[str] = set()
        for item in items:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
                continue
            except ValueError:
                pass
            name = item.lower().rstrip(".")
            if not _HOST_RE.match(name):
                raise ValueError(item)
            hosts.add(name)
        return cls(tuple(networks), frozenset(hosts))

    @property
    def restricts(self) -> bool:
        return bool(self.networks or self.hosts)

    def allows_host(self, host: str) -> bool:
        if not self.restricts:
            return True
        host = host.lower().rstrip(".").strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host in self.hosts or any(h.startswith(".") and host.endswith(h) for h in self.hosts)
        if address.version == 6 and address.ipv4_mapped:  # ::ffff:10.0.0.1 is 10.0.0.1
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def url_problem(self, url: str) -> str:
        """Why ``url``'s host is outside the list ('' when it is allowed, or the list is empty)."""
        if not self.restricts:
            return ""
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            return "is not a valid URL"
        if not self.allows_host(host):
            return f"has a host ({host[:100]!r}) outside ENVIRONMENT_ALLOWED_NETWORKS"
        return ""
