"""Opening associations politely: explicit timeouts, a per-PACS concurrency cap and rate limit,
the PACS hours (waited for, or refused), and back-off on rejections and "out of resources"
statuses.

Every call builds its own pynetdicom ``AE``: the client keeps no state between calls except the
per-PACS :class:`Gate`, which is shared by every thread of the process talking to the same PACS.

Example
-------
>>> from pynetdicom.sop_class import Verification  # doctest: +SKIP
>>> with open_association(pacs, local, [build_context(Verification)]) as assoc:  # doctest: +SKIP
...     assoc.send_c_echo()
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationServer

from dicom_io.pacs.errors import (
    AssociationRejectedError,
    OutsidePacsHoursError,
    PacsError,
    PacsTimeoutError,
    PacsUnavailableError,
    worth_retrying,
)
from dicom_io.pacs.settings import LocalAE, PacsSettings, WindowPolicy

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Status codes meaning "out of resources / try later" in C-FIND, C-MOVE, C-GET and C-STORE.
BUSY_STATUSES = frozenset({0xA700, 0xA701, 0xA702})


class Gate:
    """Caps simultaneous associations to one PACS and spaces their openings by ``1/max_rate`` s."""

    def __init__(self, max_associations: int, max_rate: float) -> None:
        self._slots = threading.BoundedSemaphore(max_associations)
        self._interval = 1.0 / max_rate
        self._lock = threading.Lock()
        self._next_start = 0.0
        self.max_associations = max_associations
        self.max_rate = max_rate
        self.active = 0
        self.peak = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one association slot (blocking) after waiting for the rate limit."""
        with self._slots:
            with self._lock:
                now = time.monotonic()
                wait = max(0.0, self._next_start - now)
                self._next_start = max(now, self._next_start) + self._interval
                self.active += 1
                self.peak = max(self.peak, self.active)
            try:
                if wait:
                    time.sleep(wait)
                yield
            finally:
                with self._lock:
                    self.active -= 1


_GATES: dict[tuple[str, str, int], Gate] = {}
_GATES_LOCK = threading.Lock()


def gate_for(pacs: PacsSettings) -> Gate:
    """The process-wide :class:`Gate` of ``pacs`` (created on first use from its limits)."""
    with _GATES_LOCK:
        gate = _GATES.get(pacs.key)
        limits = (pacs.max_associations, pacs.max_rate)
        if gate is None or (gate.max_associations, gate.max_rate) != limits:
            gate = _GATES[pacs.key] = Gate(pacs.max_associations, pacs.max_rate)
        return gate


class Clock(Protocol):
    """Local wall-clock time and sleeping; injectable so the PACS hours can be tested."""

    def now(self) -> dt.datetime:
        """The current local time (naive, like the window's times of day)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        ...


class SystemClock:
    """The real clock: :func:`datetime.datetime.now` and :func:`time.sleep`."""

    def now(self) -> dt.datetime:
        """The current local time."""
        return dt.datetime.now()

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of real time."""
        time.sleep(seconds)


#: Longest single sleep while waiting for the window, so that clock changes are noticed.
WINDOW_POLL_S = 30.0


def _outside_window(pacs: PacsSettings, wait: float, why: str = "") -> OutsidePacsHoursError:
    return OutsidePacsHoursError(
        f"PACS {pacs.address}: outside the PACS hours {pacs.pacs_hours}; "
        f"opens in {wait:.0f} s{why}", wait)


def check_pacs_hours(pacs: PacsSettings, now: dt.datetime | None = None) -> None:
    """Raise :class:`OutsidePacsHoursError` when ``pacs`` has a window and it is closed."""
    if pacs.pacs_hours is None:
        return
    wait = pacs.pacs_hours.seconds_until_open(now or dt.datetime.now())
    if wait > 0:
        raise _outside_window(pacs, wait)


def wait_for_pacs_hours(pacs: PacsSettings, clock: Clock | None = None) -> float:
    """Return once ``pacs``'s PACS hours have begun, after how many seconds of waiting.

    With ``window_policy`` "fail", or when the window opens later than ``window_max_wait``,
    raise :class:`OutsidePacsHoursError` at once instead of waiting. Logs once per wait.
    """
    window = pacs.pacs_hours
    if window is None:
        return 0.0
    clock = clock or SystemClock()
    started = clock.now()
    wait = window.seconds_until_open(started)
    if wait == 0:
        return 0.0
    if pacs.window_policy is WindowPolicy.FAIL:
        raise _outside_window(pacs, wait, " (window_policy is fail)")
    _check_max_wait(pacs, 0.0, wait)
    logger.info("PACS %s: outside the PACS hours %s; waiting %.0f s for it to open",
                pacs.address, window, wait)
    waited = 0.0
    while wait > 0:
        clock.sleep(min(wait, WINDOW_POLL_S))
        now = clock.now()
        waited, wait = (now - started).total_seconds(), window.seconds_until_open(now)
        _check_max_wait(pacs, waited, wait)
    logger.info("PACS %s: PACS hours begun after waiting %.0f s", pacs.address, waited)
    return waited


def _check_max_wait(pacs: PacsSettings, waited: float, wait: float) -> None:
    if wait > 0 and waited + wait > pacs.window_max_wait:
        raise _outside_window(pacs, wait, f", later than window_max_wait "
                                          f"{pacs.window_max_wait:.0f} s allows")


#: Events to which pynetdicom binds its per-message logging handlers (``standard`` level).
_LOG_EVENTS = (evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT, evt.EVT_PDU_RECV, evt.EVT_PDU_SENT)


def _is_pynetdicom_handler(handler: Callable) -> bool:
    return getattr(handler, "__module__", "").split(".")[0] == "pynetdicom"


def drop_standard_log_handlers(target: Association | AssociationServer) -> None:
    """Unbind pynetdicom's per-message logging handlers from one association or server.

    pynetdicom binds them to every association (``_config.LOG_HANDLER_LEVEL``, a process-wide
    switch we leave alone) and they do their work whatever the log level: for each C-STORE
    request one copies the whole dataset (``data_set.getvalue()``) and all format their lines.
    They are found with the public ``get_handlers`` as the handlers of the four logging events
    that pynetdicom itself defines (ours and the caller's are kept). They are kept while the
    ``pynetdicom`` logger is enabled for DEBUG, for troubleshooting.
    """
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return
    for event in _LOG_EVENTS:
        for handler, _args in list(target.get_handlers(event)):
            if _is_pynetdicom_handler(handler):
                target.unbind(event, handler)


def drop_log_handlers_on_establish(event: evt.Event) -> None:
    """``evt.EVT_ESTABLISHED`` handler for servers: :func:`drop_standard_log_handlers` on each
    new association (an acceptor binds pynetdicom's handlers itself, so unbinding them from the
    server would reach only the associations already open)."""
    drop_standard_log_handlers(event.assoc)


def make_ae(pacs: PacsSettings, local: LocalAE) -> AE:
    """A fresh pynetdicom AE with our title and the PACS's explicit timeouts."""
    ae = AE(ae_title=local.ae_title)
    t = pacs.timeouts
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = t.acse, t.dimse, t.network
    ae.connection_timeout = t.connect
    ae.maximum_associations = 1
    return ae


def set_no_delay(assoc: Association) -> None:
    """Send each PDU at once (TCP_NODELAY): pynetdicom writes a request's command and dataset
    separately, and Nagle's algorithm would hold the second until the peer's delayed ACK
    (~40 ms per C-FIND against dcmqrscp, half its round trip)."""
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def ack_at_once(event: evt.Event) -> None:
    """``evt.EVT_DATA_SENT`` handler: ACK the peer's next PDU at once (TCP_QUICKACK, Linux).

    A peer that writes a message's command and dataset separately with Nagle's algorithm on
    (Debian's DCMTK, hence Orthanc, unless TCP_NODELAY is set in its environment) holds the
    dataset back until we ACK the command, and Linux delays that ACK by up to 40 ms once we
    have answered (its interactive mode): 45 ms per small instance of a C-MOVE. Re-armed after
    each PDU we send, as sending is what turns the delay back on.
    """
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket is not None else None
    if sock is not None and _QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only; elsewhere ACKs stay delayed


def keep_responses_for_the_caller(assoc: Association) -> None:
    """Let only the ``send_c_*()`` call that waits for them take responses off the DIMSE queue.

    pynetdicom's association thread (its reactor) takes any message it finds on the queue while
    it runs and serves it as a request; a response it finds there is logged as "Received
    unexpected C-FIND service message" and dropped. A ``send_c_*()`` pauses the reactor before
    sending, but the pause handshake can pass on a stale "paused" flag (the reactor was released
    by the previous request's last response and has not run since; or, on a fresh association,
    it is between its flag and its wait): the reactor then runs on for a moment after the
    request went out, and takes whatever response arrives in that moment. Discovery lost
    matches so, a few C-FINDs in a thousand, more under load. As a requestor we are never sent
    a request the reactor must serve outside a ``send_c_*()`` (C-GET's C-STOREs arrive while
    ``send_c_get()`` reads the queue), so the reactor's non-blocking reads now leave responses
    where they are.
    """
    dimse = assoc.dimse
    take = dimse.get_msg

    def get_msg(block: bool = False):  # noqa: ANN202 (pynetdicom's own signature)
        if not block:
            _, msg = dimse.peek_msg()
            if msg is not None and not msg.is_valid_request:
                return None, None
        return take(block)

    dimse.get_msg = get_msg


def _associate_once(
    pacs: PacsSettings,
    local: LocalAE,
    contexts: Sequence[PresentationContext],
    ext_neg: list | None,
    evt_handlers: list | None,
) -> Association:
    connected = threading.Event()

    def on_connect(event: evt.Event) -> None:
        connected.set()
        set_no_delay(event.assoc)

    handlers = [(evt.EVT_CONN_OPEN, on_connect), (evt.EVT_DATA_SENT, ack_at_once),
                *(evt_handlers or [])]
    tls = None
    if pacs.tls is not None:
        tls = (pacs.tls.client_context(), pacs.tls.server_hostname or pacs.host)
    ae = make_ae(pacs, local)
    assoc = ae.associate(
        pacs.host,
        pacs.port,
        contexts=list(contexts),
        ae_title=pacs.ae_title,
        max_pdu=pacs.max_pdu,
        ext_neg=ext_neg,
        tls_args=tls,
        evt_handlers=handlers,
    )
    if assoc.is_established:
        drop_standard_log_handlers(assoc)
        keep_responses_for_the_caller(assoc)
        return assoc
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        raise AssociationRejectedError(
            f"PACS {pacs.address} rejected the association from {local.ae_title}: "
            f"{rsp.result_str}, {rsp.source_str}, {rsp.reason_str}; "
            f"{_rejection_hint(pacs, local, rsp.result_source, rsp.diagnostic)}",
            transient=rsp.result == 0x02,
        )
    if not connected.is_set():
        why = "TLS handshake failed, or " if pacs.tls is not None else ""
        raise PacsUnavailableError(
            f"PACS {pacs.address}: cannot connect ({why}not listening there); check its host "
            "and port (SAM2CT_PACS or --pacs AET@host:port), that it runs, and that no "
            "firewall stands between us")
    hint = ", or the PACS refused our TLS certificate" if pacs.tls is not None else ""
    raise PacsTimeoutError(
        f"PACS {pacs.address}: association not established (aborted, ACSE timeout or no "
        f"acceptable presentation context{hint}); ask the PACS administrator whether our AE "
        f"title {local.ae_title} on this host is on its list of DICOM modalities"
    )


def _rejection_hint(pacs: PacsSettings, local: LocalAE, source: int, reason: int) -> str:
    """What to do about a rejection, by its source and reason (PS3.8 9.3.4)."""
    if source == 1 and reason == 7:  # service user: called AE title not recognised
        return (f"check the PACS's AE title {pacs.ae_title} (SAM2CT_PACS or --pacs "
                "AET@host:port)")
    if source == 1 and reason == 3:  # service user: calling AE title not recognised
        return (f"ask the PACS administrator to register our AE title {local.ae_title} (this "
                f"host, port {local.store_port}), or set the one it knows (SAM2CT_AE_TITLE or "
                "--ae-title)")
    if source == 3:  # service provider (presentation): congestion, a local limit
        return "the PACS is busy or at its association limit; try again later"
    return (f"ask the PACS administrator whether our AE title {local.ae_title} on this host "
            "may associate (its allowlist of DICOM modalities)")


@contextlib.contextmanager
def open_association(
    pacs: PacsSettings,
    local: LocalAE,
    contexts: Sequence[PresentationContext],
    *,
    ext_neg: list | None = None,
    evt_handlers: list | None = None,
    gate: Gate | None = None,
    clock: Clock | None = None,
) -> Iterator[Association]:
    """Yield an established association with ``pacs``, released (or aborted) on exit.

    First waits for the PACS hours (:func:`wait_for_pacs_hours`, ``clock`` for tests).
    Holds a slot of the PACS's gate for its whole life. Transient rejections, failed connects
    and ACSE timeouts are retried with ``pacs.backoff`` (:func:`retry_with_backoff`); a
    permanent rejection raises at once.
    """
    wait_for_pacs_hours(pacs, clock)
    gate = gate or gate_for(pacs)
    with gate.slot():
        assoc = retry_with_backoff(
            pacs, lambda: _associate_once(pacs, local, contexts, ext_neg, evt_handlers))
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()
            elif not assoc.is_aborted:
                assoc.abort()
            # Keep the slot until the association's thread has closed its socket, so the PACS
            # never sees more than the cap of connections from us, even for a moment.
            assoc.join(timeout=pacs.timeouts.acse)


def retry_with_backoff(pacs: PacsSettings, action: Callable[[], T],
                       retry_if: Callable[[PacsError], bool] = worth_retrying) -> T:
    """Run ``action``; on an error ``retry_if`` accepts, wait per ``pacs.backoff`` and retry.

    The one retry policy of PACS work: every retry of a PACS operation happens in this loop,
    with ``pacs.backoff`` (attempts, exponential delays with jitter), and only for errors that
    are transient and not yet retried (:func:`~dicom_io.pacs.errors.worth_retrying`, the
    default ``retry_if``). An error this loop gives up on is marked ``retried`` and says how
    many attempts it took, so that a loop around it (a discovery around its association, a
    retrieval's attempts, a caller) does not try it all again: retries never multiply.
    Prefect tasks do not retry PACS errors (``flows.tasks``). Retries are logged at DEBUG; a
    success after retries at INFO.
    """
    policy = pacs.backoff
    for attempt in range(1, policy.attempts + 1):
        try:
            result = action()
        except PacsError as exc:
            retry = retry_if(exc)
            if attempt == policy.attempts or not retry:
                if retry or (attempt > 1 and not exc.retried):
                    _gave_up(exc, attempt)
                raise
            delay = policy.delay(attempt)
            logger.debug("%s; retry %d/%d in %.1f s", exc, attempt, policy.attempts - 1, delay)
            time.sleep(delay)
        else:
            if attempt > 1:
                logger.info("PACS %s: answered at attempt %d", pacs.address, attempt)
            return result
    raise AssertionError("unreachable")  # pragma: no cover


def _gave_up(exc: PacsError, attempts: int) -> None:
    """Mark ``exc`` as retried, its message ending with how many attempts it took."""
    exc.retried = True
    if attempts > 1 and exc.args:
        exc.args = (f"{exc.args[0]} (gave up after {attempts} attempts)", *exc.args[1:])


def build_context(
    abstract_syntax: str, transfer_syntaxes: Sequence[str] | None = None
) -> PresentationContext:
    """A requested presentation context (thin wrapper so callers need not import pynetdicom)."""
    from pynetdicom import build_context as _build

    return _build(abstract_syntax, list(transfer_syntaxes) if transfer_syntaxes else None)
