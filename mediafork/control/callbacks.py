"""Asynchronous, signed status-callback delivery.

Shape, and why:

* One FIFO per resource (Siprec SID or Recording SID), drained by one task that exists only
  while the FIFO has work. A resource's events arrive in order (its task sends one at a time,
  retries included); different resources never wait for each other, so a slow or dead
  callback URL only delays its own resource.
* :meth:`CallbackDispatcher.enqueue` is synchronous and O(1): the engine and the API call it
  from the event loop and never wait for the network.
* A global bound on queued events: past it the oldest queued event (of any resource) is
  dropped, counted and handed to ``on_undelivered``. Memory stays bounded however many
  receivers are down.
* Each attempt has a total timeout; timeouts, connection errors and 5xx are retried with
  exponential backoff (capped at ``backoff_max``) for ``retry_for`` seconds from the event's
  creation (an hour by default: an application restart or a deploy must not lose
  ``siprec-stopped``), and at most ``max_attempts`` times when that is set; 2xx is success;
  any other status (4xx, and 3xx since redirects are not followed) is final: retrying a
  request the receiver rejected would only repeat the rejection. The horizon counts from the
  event's creation, so a replay after a restart does not start it again; every event gets at
  least one attempt.
* Logs name the resource, a redacted URL (no credentials, no query) and the outcome; never
  parameters, signatures or tokens.
* Every request goes through the :class:`~.egress.EgressPolicy`: the URL is checked before
  each delivery (an IP host is never resolved, so this is its only check), and a host name is
  resolved by :class:`PolicyResolver`, which checks every address it gets and hands the
  connector only checked addresses, so what is connected to is what was checked (no DNS
  rebinding between check and connect; the Host header and TLS name checks still use the
  URL's host name). A refused delivery sends nothing, is final, counted in
  ``stats.denied`` and logged with the reason and the redacted URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from prometheus_client import Histogram

from .egress import EgressPolicy, IPAddress, parse_ip_host
from .events import CallbackEvent
from .signature import SIGNATURE_HEADER, PreparedRequest, prepare_request, redact_url

log = logging.getLogger("mediafork.callbacks")

UndeliveredReason = Literal["failed", "dropped", "closed", "no-token"]
TokenLookup = Callable[[str], str | None]
"""account SID → auth token (None if the account is unknown)."""


@dataclass
class DeliveryStats:
    """Outcome counters; plain ints so a metrics exporter can read them at any time."""

    delivered: int = 0
    """Events acknowledged with a 2xx."""
    retried: int = 0
    """Attempts that failed in a retryable way and were tried again."""
    failed: int = 0
    """Events given up on (final status, attempts exhausted, or no auth token)."""
    dropped: int = 0
    """Events discarded unsent because the pending bound was exceeded."""
    abandoned: int = 0
    """Events still queued or in flight when :meth:`CallbackDispatcher.close` gave up."""
    denied: int = 0
    """Events not sent because the egress policy refused their URL or its addresses."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _Item:
    seq: int
    event: CallbackEvent
    dropped: bool = False


class _Retry(Exception):
    """An attempt failed in a way worth retrying; the message is safe to log."""


class _Final(Exception):
    """An attempt failed for good; the message is safe to log."""


class _Denied(Exception):
    """The egress policy refused the request; nothing was sent. The message is safe to log."""


class EgressDenied(OSError):
    """Raised by :class:`PolicyResolver`; an OSError so aiohttp reports it as a connection
    error (``ClientConnectorError.os_error``) without connecting anywhere."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PolicyResolver(AbstractResolver):
    """Resolves with the system resolver, then checks every address against the policy.

    One refused address refuses the whole name: a host that resolves to both a public and a
    metadata address must not get a second chance through happy eyeballs.
    """

    def __init__(self, policy: Callable[[], EgressPolicy]) -> None:
        self._policy = policy
        self._resolver = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        policy = self._policy()
        by_name = policy.check_name(host)
        if not by_name.allowed:
            raise EgressDenied(by_name.reason)
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            address = parse_ip_host(result["host"])
            if address is None:  # getaddrinfo returns numeric hosts; be safe anyway
                raise EgressDenied(f"{host} resolved to something that is not an address")
            decision = policy.check_address(address, result["port"],
                                            trusted_name=by_name.trusted_name)
            if not decision.allowed:
                raise EgressDenied(f"{host} resolves to {decision.reason}")
        return results

    async def close(self) -> None:
        await self._resolver.close()


def is_local_address(address: IPAddress) -> bool:
    """Whether *address* is one of this machine's: binding a UDP socket to it succeeds only
    then. For :meth:`EgressPolicy.with_listeners` (a wildcard listen covers every local
    address). A local system call, no packet is sent."""
    if address.is_loopback:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


class CallbackDispatcher:
    """Delivers :class:`CallbackEvent` objects; see the module docstring for the rules.

    Use from one asyncio event loop. Call :meth:`close` before the loop ends.
    """

    def __init__(
        self,
        auth_token_for: TokenLookup,
        *,
        timeout: float = 10.0,
        max_attempts: int = 0,
        retry_for: float = 3600.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 60.0,
        jitter: float = 0.1,
        max_pending: int = 10_000,
        max_connections: int = 100,
        on_delivered: Callable[[CallbackEvent], None] | None = None,
        on_undelivered: Callable[[CallbackEvent, UndeliveredReason], None] | None = None,
        user_agent: str = "mediafork-callbacks/0.1",
        egress: EgressPolicy | None = None,
    ) -> None:
        if max_attempts < 0 or max_pending < 1 or timeout <= 0 or retry_for < 0:
            raise ValueError("max_attempts >= 0 (0: no limit), max_pending >= 1, timeout > 0 "
                             "and retry_for >= 0 are required")
        self._token_for = auth_token_for
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.retry_for = retry_for
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.max_pending = max_pending
        self._max_connections = max_connections
        self._on_delivered = on_delivered
        self._on_undelivered = on_undelivered
        self._user_agent = user_agent
        self.egress = egress if egress is not None else EgressPolicy()
        """Where callbacks may go; the daemon replaces it once its listeners are bound."""
        self.stats = DeliveryStats()
        # Unregistered: the daemon's collector yields it with its other metrics.
        self.delivery_seconds = Histogram(
            "mediafork_callback_delivery_seconds",
            "From a status-callback event to its receiver's 2xx, retries included.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                     900.0, 3600.0), registry=None)
        self._seq = itertools.count()
        # Every queued (not yet taken) item, oldest first: O(1) drop-oldest and removal.
        self._pending: OrderedDict[int, _Item] = OrderedDict()
        self._queues: dict[str, deque[_Item]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._inflight: dict[str, _Item] = {}
        self._session: aiohttp.ClientSession | None = None
        self._resolver: PolicyResolver | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"CallbackDispatcher(pending={self.pending}, active={len(self._workers)}, "
            f"stats={self.stats.as_dict()})"
        )

    @property
    def pending(self) -> int:
        """Events queued and not yet being sent."""
        return len(self._pending)

    @property
    def outstanding(self) -> int:
        """Events not settled yet: queued, being sent, or waiting to be retried."""
        return len(self._pending) + len(self._inflight)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- producer side ------------------------------------------------------------------

    def enqueue(self, event: CallbackEvent) -> bool:
        """Queue *event* for delivery and return at once.

        Must be called on the dispatcher's event loop (use :meth:`enqueue_threadsafe` from
        other threads). Returns False if the dispatcher is closed; the event then goes to
        ``on_undelivered`` with reason ``closed``.
        """
        if self._closed:
            self._undelivered(event, "closed")
            return False
        loop = asyncio.get_running_loop()
        item = _Item(next(self._seq), event)
        self._pending[item.seq] = item
        key = event.resource_sid
        self._queues.setdefault(key, deque()).append(item)
        while len(self._pending) > self.max_pending:
            _, oldest = self._pending.popitem(last=False)
            oldest.dropped = True
            self.stats.dropped += 1
            log.warning(
                "status callback dropped (pending bound %d): resource=%s url=%s",
                self.max_pending,
                oldest.event.resource_sid,
                redact_url(oldest.event.url),
            )
            self._undelivered(oldest.event, "dropped")
        if key not in self._workers:
            self._workers[key] = loop.create_task(self._drain(key), name=f"callbacks:{key}")
        return True

    def enqueue_threadsafe(self, loop: asyncio.AbstractEventLoop, event: CallbackEvent) -> None:
        """Queue from another thread (e.g. the engine's event thread)."""
        loop.call_soon_threadsafe(self.enqueue, event)

    # -- consumer side ------------------------------------------------------------------

    async def _drain(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while queue:
                item = queue.popleft()
                if item.dropped:
                    continue
                self._pending.pop(item.seq, None)
                self._inflight[key] = item
                await self._deliver(item.event)
                del self._inflight[key]
        finally:
            # No await between the emptiness check above and here, so enqueue() cannot
            # add to this queue unseen: it either ran before (queue non-empty) or after
            # (no worker registered, it starts a new one).
            del self._workers[key]
            if not queue:
                self._queues.pop(key, None)

    def _backoff(self, attempt: int) -> float:
        delay = min(self.backoff_max, self.backoff_initial * (2 ** (attempt - 1)))
        if self.jitter:
            delay *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return delay

    async def _deliver(self, event: CallbackEvent) -> None:
        token = self._token_for(event.account_sid)
        if token is None:
            self.stats.failed += 1
            log.error("status callback not sent: no auth token for the resource's account "
                      "(resource=%s)", event.resource_sid)
            self._undelivered(event, "no-token")
            return
        try:
            prepared = prepare_request(token, event.method, event.url, event.params)
        except ValueError:
            self.stats.failed += 1
            log.error("status callback not sent: invalid URL (resource=%s)", event.resource_sid)
            self._undelivered(event, "failed")
            return
        del token
        reason = ""
        # Wall-clock time: the creation time may come from the store, across a restart.
        created = event.created_at or time.time()
        horizon = created + self.retry_for
        attempt = 0
        while True:
            attempt += 1
            try:
                status = await self._attempt(event.url, prepared)
            except _Retry as exc:
                reason = str(exc)
            except _Final as exc:
                reason = str(exc)
                break
            except _Denied as exc:
                self.stats.denied += 1
                log.warning("status callback refused by the egress policy (%s): resource=%s "
                            "url=%s", exc, event.resource_sid, redact_url(event.url))
                self._undelivered(event, "failed")
                return
            else:
                self.stats.delivered += 1
                self.delivery_seconds.observe(max(0.0, time.time() - created))
                log.debug("status callback delivered: resource=%s url=%s status=%d",
                          event.resource_sid, redact_url(event.url), status)
                if self._on_delivered is not None:
                    self._call_hook(self._on_delivered, event)
                return
            if self.max_attempts and attempt >= self.max_attempts:
                reason += f"; gave up after {attempt} attempts"
                break
            delay = self._backoff(attempt)
            if time.time() + delay > horizon:
                reason += f"; gave up after {attempt} attempts, retry horizon of " \
                          f"{self.retry_for:g} s reached"
                break
            self.stats.retried += 1
            log.info("status callback attempt %d failed (%s), retrying in %.1f s: resource=%s "
                     "url=%s", attempt, reason, delay, event.resource_sid, redact_url(event.url))
            await asyncio.sleep(delay)
        self.stats.failed += 1
        log.warning("status callback failed (%s): resource=%s url=%s",
                    reason, event.resource_sid, redact_url(event.url))
        self._undelivered(event, "failed")

    async def _attempt(self, url: str, prepared: PreparedRequest) -> int:
        # Checked at every attempt: the daemon's listeners may be known better by now, and
        # an IP host never reaches the resolver, so this is its only check.
        decision = self.egress.check_url(url)
        if not decision.allowed:
            raise _Denied(decision.reason)
        session = self._get_session()
        headers = {SIGNATURE_HEADER: prepared.signature, "User-Agent": self._user_agent}
        try:
            async with session.request(
                prepared.method,
                prepared.url,
                data=list(prepared.form) if prepared.method == "POST" else None,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                status = response.status
        except TimeoutError:
            raise _Retry("timeout") from None
        except aiohttp.InvalidURL:
            raise _Final("invalid URL") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, EgressDenied):
                raise _Denied(exc.os_error.reason) from None
            raise _Retry(type(exc).__name__) from None
        except aiohttp.ClientError as exc:
            # The class name only: some aiohttp messages quote the URL, credentials included.
            raise _Retry(type(exc).__name__) from None
        if 200 <= status < 300:
            return status
        if status >= 500:
            raise _Retry(f"HTTP {status}")
        raise _Final(f"HTTP {status}")

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._resolver = PolicyResolver(lambda: self.egress)
            self._session = aiohttp.ClientSession(
                # No DNS cache: every connection resolves and checks what it connects to.
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, use_dns_cache=False,
                    resolver=self._resolver),
                # Receivers are unrelated parties: never carry one's cookies to another.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    # -- hooks and shutdown ---------------------------------------------------------------

    def _call_hook(self, hook: Callable[..., None], *args: object) -> None:
        try:
            hook(*args)
        except Exception:  # a broken hook must not stop delivery of other events
            log.exception("status callback hook raised")

    def _undelivered(self, event: CallbackEvent, reason: UndeliveredReason) -> None:
        if self._on_undelivered is not None:
            self._call_hook(self._on_undelivered, event, reason)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting events, try to flush for up to *timeout* seconds, then give up.

        Whatever is still queued or in flight at the deadline is counted as ``abandoned``
        and handed to ``on_undelivered`` (reason ``closed``) so it can be persisted.
        """
        self._closed = True
        workers = list(self._workers.values())
        if workers:
            _, still_running = await asyncio.wait(workers, timeout=timeout)
            for task in still_running:
                task.cancel()
            for task in still_running:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        leftovers = [item.event for item in self._inflight.values()]
        leftovers += [item.event for item in self._pending.values()]
        self._inflight.clear()
        self._pending.clear()
        self._queues.clear()
        for event in leftovers:
            self.stats.abandoned += 1
            self._undelivered(event, "closed")
        if leftovers:
            log.warning("closed with %d status callbacks undelivered", len(leftovers))
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:  # the connector does not close a resolver it was given
            await self._resolver.close()
            self._resolver = None
