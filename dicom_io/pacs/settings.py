"""Plain, validated descriptions of a remote PACS and of ourselves (the local Application Entity).

Both are frozen dataclasses that validate on construction, so an object that exists is usable.

Example
-------
>>> pacs = PacsSettings.parse("ORTHANC@127.0.0.1:4242")
>>> pacs.ae_title, pacs.host, pacs.port
('ORTHANC', '127.0.0.1', 4242)
>>> LocalAE("SAM2CT", store_port=11113, allowed_callers=("ORTHANC",)).ae_title
'SAM2CT'
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
import re
import ssl
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

_AET = re.compile(r"^[\x20-\x7e]{1,16}$")
_ADDRESS = re.compile(r"^(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d+)$")


class WindowPolicy(StrEnum):
    """What opening an association outside the PACS hours does: wait for it, or fail."""

    WAIT = "wait"
    FAIL = "fail"


class RetrieveMethod(StrEnum):
    """How instances come back from the PACS: C-MOVE into our storage SCP, or C-GET."""

    MOVE = "move"
    GET = "get"


def check_ae_title(name: str, value: str) -> str:
    """Return ``value`` stripped if it is a valid AE title, else raise ``ValueError``."""
    stripped = value.strip() if isinstance(value, str) else value
    if not isinstance(stripped, str) or not _AET.match(stripped) or "\\" in stripped:
        raise ValueError(
            f"Invalid '{name}' value '{value}' - an AE title is 1 to 16 printable "
            "ASCII characters without backslash"
        )
    return stripped


def check_ip_address(name: str, value: str) -> str:
    """Return ``value`` stripped if it is an IPv4 or IPv6 address, else raise ``ValueError``."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except (AttributeError, ValueError) as e:
        raise ValueError(f"Invalid '{name}' value '{value}' - not an IP address (e.g. "
                         "192.0.2.10, 127.0.0.1, or 0.0.0.0 for every interface)") from e


def check_port(name: str, value: int) -> int:
    """Return ``value`` if it is a TCP port number (1-65535), else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"Invalid '{name}' value '{value}' - a TCP port is 1 to 65535")
    return value


@dataclass(frozen=True)
class Timeouts:
    """Explicit timeouts in seconds for association setup (ACSE), messages (DIMSE) and sockets."""

    acse: float = 30.0
    dimse: float = 60.0
    network: float = 60.0
    connect: float = 10.0

    def __post_init__(self) -> None:
        for name in ("acse", "dimse", "network", "connect"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"Invalid 'timeouts.{name}' value '{value}' - must be > 0 s")


@dataclass(frozen=True)
class Backoff:
    """Retry policy for association rejections and "out of resources" statuses.

    Delay before retry ``n`` (1-based) is ``min(base * 2**(n-1), maximum)`` seconds, with up to
    ``jitter`` (a fraction) added at random so that parallel workers spread out.
    """

    attempts: int = 4
    base: float = 1.0
    maximum: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"Invalid 'backoff.attempts' value '{self.attempts}' - must be >= 1")
        if self.base < 0 or self.maximum < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("Invalid 'backoff' - delays must be >= 0 and jitter within 0..1")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return min(self.base * 2 ** (retry - 1), self.maximum) * (1 + self.jitter * random.random())


@dataclass(frozen=True)
class TlsOptions:
    """TLS for associations: our certificate and key, and the CA bundle we trust.

    As a client (``PacsSettings.tls``) the CA verifies the PACS and the certificate is optional
    (needed when the PACS requires client certificates). For our storage SCP (``LocalAE.tls``)
    the certificate is required and the CA, when given, verifies the PACS calling us.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_hostname: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("Invalid 'tls' - cert_file and key_file must both be provided")

    def client_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` for connecting to the PACS (verifies it unless no CA is given)."""
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
        )
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` for our storage SCP (requires callers' certificates when a CA is
        given)."""
        if self.cert_file is None:
            raise ValueError("Invalid 'tls' - a TLS server needs cert_file and key_file")
        ctx = ssl.create_default_context(
            ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca_file) if self.ca_file else None
        )
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        if self.ca_file is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass(frozen=True)
class PacsHours:
    """The daily hours during which we may talk to the PACS, e.g. 19:00-07:00 (may wrap
    midnight); not to be confused with a harvest's window of study dates.

    >>> PacsHours.parse("19:00-07:00").contains(dt.time(23, 0))
    True
    """

    start: dt.time
    end: dt.time

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError(f"Invalid 'pacs_hours' value '{self}' - start equals end; "
                             "leave the window unset to allow any time")

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    @classmethod
    def parse(cls, text: str) -> PacsHours:
        """Parse ``HH:MM-HH:MM``."""
        try:
            a, b = text.split("-")
            start, end = dt.time.fromisoformat(a.strip()), dt.time.fromisoformat(b.strip())
        except ValueError as e:
            raise ValueError(
                f"Invalid 'pacs_hours' value '{text}' - expected HH:MM-HH:MM"
            ) from e
        return cls(start, end)

    def contains(self, moment: dt.time) -> bool:
        """Whether ``moment`` (local time of day) falls inside the window."""
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def seconds_until_open(self, now: dt.datetime) -> float:
        """Seconds from ``now`` until the window opens (0 when it is open)."""
        if self.contains(now.time()):
            return 0.0
        opening = now.replace(
            hour=self.start.hour, minute=self.start.minute, second=self.start.second, microsecond=0
        )
        if opening <= now:
            opening += dt.timedelta(days=1)
        return (opening - now).total_seconds()


@dataclass(frozen=True)
class PacsSettings:
    """A remote PACS: where it is, how to retrieve from it, and how politely to do so.

    ``max_associations`` caps simultaneous associations from this process, ``max_rate`` caps
    association openings per second, ``result_limit`` is the PACS's C-FIND result cap when known.
    Outside ``pacs_hours``, opening an association waits for the window to open
    (``window_policy`` "wait", at most ``window_max_wait`` seconds, else it fails at once) or
    fails ("fail"); an association already open is not interrupted when the window closes.
    """

    ae_title: str
    host: str
    port: int
    method: RetrieveMethod = RetrieveMethod.MOVE
    tls: TlsOptions | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    backoff: Backoff = field(default_factory=Backoff)
    max_associations: int = 2
    max_rate: float = 5.0
    pacs_hours: PacsHours | None = None
    window_policy: WindowPolicy = WindowPolicy.WAIT
    window_max_wait: float = 86400.0
    result_limit: int | None = None
    max_pdu: int = 0  # 0 = unlimited

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title("pacs.ae_title", self.ae_title))
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"Invalid 'pacs.host' value '{self.host}' - must not be empty")
        check_port("pacs.port", self.port)
        try:
            object.__setattr__(self, "method", RetrieveMethod(self.method))
        except ValueError as e:
            raise ValueError(f"Invalid 'pacs.method' value '{self.method}' - use move or get") from e
        try:
            object.__setattr__(self, "window_policy", WindowPolicy(self.window_policy))
        except ValueError as e:
            raise ValueError(f"Invalid 'window_policy' value '{self.window_policy}' - use wait "
                             "or fail") from e
        if not self.window_max_wait >= 0:
            raise ValueError(f"Invalid 'window_max_wait' value '{self.window_max_wait}' - must "
                             "be >= 0 s")
        if self.max_associations < 1:
            raise ValueError(f"Invalid 'max_associations' value '{self.max_associations}' - >= 1")
        if not self.max_rate > 0:
            raise ValueError(f"Invalid 'max_rate' value '{self.max_rate}' - must be > 0")
        if self.result_limit is not None and self.result_limit < 1:
            raise ValueError(f"Invalid 'result_limit' value '{self.result_limit}' - must be >= 1")

    @classmethod
    def parse(cls, address: str, **options: object) -> PacsSettings:
        """Build from ``AET@host:port`` (IPv6 hosts in brackets); ``options`` set other fields."""
        match = _ADDRESS.match(address.strip()) if isinstance(address, str) else None
        if match is None:
            raise ValueError(f"Invalid PACS address '{address}' - expected AET@host:port")
        host = match["host"].strip("[]")
        return cls(match["aet"], host, int(match["port"]), **options)  # type: ignore[arg-type]

    @property
    def address(self) -> str:
        """``AET@host:port``, the form users type."""
        return f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def key(self) -> tuple[str, str, int]:
        """Identity used for per-PACS politeness limits."""
        return (self.ae_title, self.host, self.port)


@dataclass(frozen=True)
class LocalAE:
    """Ourselves: our AE title, our storage SCP (where it listens, how much it takes) and who may
    send to it.

    An empty ``allowed_callers`` means only the PACS we retrieve from may call us (the caller must
    pass it explicitly); there is no accept-anyone mode. With ``tls`` our SCP accepts only TLS
    (the PACS must then send C-MOVE results over TLS too).

    ``bind_address`` is the IP address the storage SCP listens on; ``None`` (the default) means
    the local address of the route to the PACS (loopback when the PACS is on loopback or none is
    known), never every interface unless set to ``"0.0.0.0"`` (or ``"::"``) explicitly. A
    connection must carry a complete association request within ``acse_timeout`` seconds or is
    closed; one remote address holds at most ``max_associations_per_peer`` connections at once,
    all of them together at most ``max_associations``.
    """

    ae_title: str = "SAM2CT"
    store_port: int = 11113
    allowed_callers: tuple[str, ...] = ()
    bind_address: str | None = None
    tls: TlsOptions | None = None
    acse_timeout: float = 5.0
    max_associations: int = 16
    max_associations_per_peer: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title("ae_title", self.ae_title))
        check_port("store_port", self.store_port)
        callers = tuple(check_ae_title("allowed_callers", c) for c in self.allowed_callers)
        object.__setattr__(self, "allowed_callers", callers)
        if self.bind_address is not None:
            object.__setattr__(self, "bind_address", check_ip_address("bind_address",
                                                                      self.bind_address))
        if self.tls is not None and self.tls.cert_file is None:
            raise ValueError("Invalid 'local.tls' - our storage SCP needs cert_file and key_file")
        if not self.acse_timeout > 0:
            raise ValueError(f"Invalid 'acse_timeout' value '{self.acse_timeout}' - must be > 0 s")
        for name in ("max_associations", "max_associations_per_peer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid '{name}' value '{value}' - must be an int >= 1")
