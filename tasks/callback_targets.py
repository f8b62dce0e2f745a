"""Where job callbacks may go (`--callback_allow`): a URL is checked when a job is submitted and again before
each delivery, with its host resolved each time, so that a client cannot make the server send requests into
the cluster (server-side request forgery), nor get there later by changing what its host name resolves to
(DNS rebinding): the delivery connects to the very address it checked.

Entries, comma-separated:
- an address or network (`10.1.2.0/24`, `192.0.2.7`, `::1`): admits any http(s) URL whose host resolves to
  addresses it covers only — the way to reach a receiver inside the cluster, loopback included;
- a host name (`hooks.example.com`, or `*.example.com` for its subdomains) or a URL prefix
  (`https://hooks.example.com/ovms/`): admits the URLs it names, but only while their host resolves to
  public addresses: a name never leads to a private, loopback, link-local (169.254.169.254, the cloud
  metadata service) or otherwise reserved address unless an address entry admits it.
URLs with user info (`user:pass@`), schemes other than http and https, or non-ASCII or control characters
are refused whatever the list says; an empty list refuses every callback.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from inference.errors import InvalidArgument

MAX_URL_CHARS = 2048
SCHEMES = {"http": 80, "https": 443}
_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")
_NAME = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]  # (host, port) -> its addresses, as text


def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses as the system resolves them (OSError if it cannot), first one first."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(entry[4][0]) for entry in found))


@dataclass(frozen=True)
class Destination:
    """A checked callback URL: where to connect, and what to send as host and path."""

    url: str
    scheme: str
    host: str  # as the URL names it: the Host header and TLS server name
    port: int
    target: str  # path and query
    address: str  # the checked address to connect to


@dataclass(frozen=True)
class _Prefix:
    scheme: str
    host: str
    port: int
    path: str

    def admits(self, scheme: str, host: str, port: int, path: str) -> bool:
        if (scheme, host, port) != (self.scheme, self.host, self.port):
            return False
        return path == self.path.rstrip("/") or path.startswith(
            self.path if self.path.endswith("/") else self.path + "/"
        )


class AllowList:
    def __init__(
        self, networks: tuple[Network, ...] = (), names: tuple[str, ...] = (), prefixes: tuple[_Prefix, ...] = ()
    ):
        self._networks = networks
        self._names = names
        self._prefixes = prefixes
        self.text = ",".join(
            [*map(str, networks), *names, *(f"{p.scheme}://{p.host}:{p.port}{p.path}" for p in prefixes)]
        )

    @staticmethod
    def parse(flag: str, text: str) -> AllowList:
        """The list given as `--callback_allow` (ValueError naming a bad entry)."""
        networks: list[Network] = []
        names: list[str] = []
        prefixes: list[_Prefix] = []
        for entry in filter(None, (part.strip() for part in text.split(","))):
            if "://" in entry:
                try:
                    prefixes.append(_prefix(entry))
                except (ValueError, InvalidArgument) as exc:
                    raise ValueError(f"{flag}: {_reason(exc)}") from None
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if not _NAME.fullmatch(entry.lower()):
                raise ValueError(f"{flag}: {entry!r} is neither an address, a network, a host name nor a URL prefix")
            names.append(entry.lower())
        return AllowList(tuple(networks), tuple(names), tuple(prefixes))

    def __bool__(self) -> bool:
        return bool(self._networks or self._names or self._prefixes)

    def check(self, url: str, resolve: Resolver = system_resolver) -> Destination:
        """The URL's destination if the list admits it, its host resolved now; InvalidArgument saying why not."""
        if not self:
            raise InvalidArgument("Callbacks are off on this server: it has no --callback_allow")
        parts = _split(url)
        host = (parts.hostname or "").lower()
        port = parts.port or SCHEMES[parts.scheme]
        try:
            addresses = [_address(text) for text in ([host] if _is_address(host) else resolve(host, port))]
        except (OSError, UnicodeError, ValueError) as exc:
            raise InvalidArgument(f"callback_url {_short(url)}: cannot resolve {host}: {exc}") from None
        if not addresses:
            raise InvalidArgument(f"callback_url {_short(url)}: {host} has no address")
        outside = [address for address in addresses if not any(address in net for net in self._networks)]
        if outside:
            prefixed = any(prefix.admits(parts.scheme, host, port, parts.path or "/") for prefix in self._prefixes)
            if not (self._names_it(host) or prefixed):
                shown = host if host == str(outside[0]) else f"{host} ({outside[0]})"
                raise InvalidArgument(f"callback_url {_short(url)}: --callback_allow does not admit {shown}")
            private = [address for address in outside if not address.is_global]
            if private:
                raise InvalidArgument(
                    f"callback_url {_short(url)}: {host} resolves to {private[0]}, not a public address; only an "
                    "address entry of --callback_allow admits it"
                )
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Destination(url, parts.scheme, host, port, target, str(addresses[0]))

    def _names_it(self, host: str) -> bool:
        return any(host == name or (name.startswith("*.") and host.endswith(name[1:])) for name in self._names)


def _split(url: str, what: str = "callback_url") -> SplitResult:
    """The URL's parts, refusing what no callback URL may be (InvalidArgument)."""
    shown = f"{what} {_short(url)}"
    if len(url) > MAX_URL_CHARS:
        raise InvalidArgument(f"{what} is longer than {MAX_URL_CHARS} characters")
    if not url.isascii() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise InvalidArgument(f"{shown}: only printable ASCII, no spaces (IDNA hosts as punycode)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise InvalidArgument(f"{shown}: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise InvalidArgument(f"{shown}: not an http:// or https:// URL")
    if "@" in parts.netloc:
        raise InvalidArgument(f"{shown}: no user info (user:password@) in a callback URL")
    if not parts.hostname:
        raise InvalidArgument(f"{shown}: no host")
    if parts.port == 0:
        raise InvalidArgument(f"{shown}: port 0 is no port")
    if _DOT_SEGMENT.search(unquote(parts.path)):
        raise InvalidArgument(f"{shown}: no '.' or '..' path segments (a receiver would climb out of its prefix)")
    return parts


def _prefix(entry: str) -> _Prefix:
    parts = _split(entry, "a URL prefix")
    return _Prefix(parts.scheme, (parts.hostname or "").lower(), parts.port or SCHEMES[parts.scheme], parts.path or "/")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# IPv6 addresses that carry an IPv4 one a gateway may reach: NAT64 (64:ff9b::/96), IPv4-compatible (::/96) and
# IPv4-translated (::ffff:0:0:0/96); 6to4 (2002::/16) is read by ipaddress itself.
_EMBEDDING = tuple(ipaddress.ip_network(net) for net in ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96"))


def _address(text: str) -> Address:
    """An address as checked: an IPv6 address that embeds an IPv4 one (::ffff:10.0.0.1, 64:ff9b::a9fe:a9fe,
    2002:a9fe:a9fe::1) as the IPv4 one it reaches."""
    address = ipaddress.ip_address(text.split("%", 1)[0])  # no zone index
    if not isinstance(address, ipaddress.IPv6Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _EMBEDDING) and int(address) & 0xFFFFFFFF > 1:  # not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _short(url: str) -> str:
    return url if len(url) <= 200 else url[:200] + "…"


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, InvalidArgument) else str(exc)
