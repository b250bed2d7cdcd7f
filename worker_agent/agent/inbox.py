"""Reading this environment's command stream: the consumer group, validation, de-duplication,
expiry and generations, up to handing each command over and acknowledging it when done.

The consumer name is the environment name, so a restarted agent first re-reads its own
pending entries (id ``0``), then takes over what another consumer name left pending for a
long time, then reads new entries (``>``). Nothing read can kill the agent: a bad entry is
acknowledged as an error. A command without the supervisor's signature (``identity``) is
not even decoded: it is acknowledged ``refused`` under its stream entry's id (so it cannot mark
a real command's id done, nor close a request), logged at most once a minute, and dropped.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

import redis

from apps_registry.control import keys, protocol
from apps_registry.names import is_valid_name
from worker_agent.agent.commands import Delivery
from worker_agent.agent.identity import Identity
from worker_agent.agent.link import RedisLink
from worker_agent.agent.reporter import Reporter

log = logging.getLogger("worker_agent.agent")

READ_BLOCK_MS = 1000
READ_COUNT = 100
# Pending entries idle this long under another consumer name are taken over.
CLAIM_IDLE_MS = 60_000
# Processed command ids remembered in memory (Redis remembers them longer).
DONE_MEMORY = 10_000
_REFUSAL_LOG_EVERY = 60.0


class Generations:
    """Newest generation seen per app and incarnation, in issue order: anything older is
    superseded. Keyed by the incarnation too, since an app deleted and created again under
    its name counts its generations from zero: the deleted app's must not supersede them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest: dict[str, int] = {}

    def get(self, app: str, incarnation: str = "") -> int:
        with self._lock:
            return self._newest.get(keys.generation_field(app, incarnation), 0)

    def see(self, app: str, generation: int, incarnation: str = "") -> None:
        self._see(keys.generation_field(app, incarnation), generation)

    def _see(self, field: str, generation: int) -> None:
        with self._lock:
            if generation > self._newest.get(field, 0):
                self._newest[field] = generation

    def load(self, client: redis.Redis, env: str) -> None:
        """Merge in what this environment acknowledged before (``P:gen:<env>``)."""
        for field, value in client.hgetall(keys.generations(env)).items():
            try:
                self._see(field, int(value))
            except ValueError:
                continue


class Inbox:
    def __init__(
        self,
        link: RedisLink,
        reporter: Reporter,
        generations: Generations,
        *,
        env: str,
        submit: Callable[[Delivery], None],
        identity: Identity,
    ) -> None:
        self.link = link
        self.identity = identity
        self._refusals_logged_at = float("-inf")
        self._refusals_unlogged = 0
        self.reporter = reporter
        self.generations = generations
        self.env = env
        self.stream = keys.command_stream(env)
        self.consumer = env
        self._submit = submit
        self._done: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._inflight: set[str] = set()
        self._duplicates: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._group_link_generation = -1
        self._cursor = "0"

    @property
    def _client(self) -> redis.Redis:
        return self.link.client

    def _xack(self, *entry_ids: str) -> None:
        self._client.xack(self.stream, protocol.AGENT_GROUP, *entry_ids)

    # --- reading ----------------------------------------------------------------------------

    def _ensure_group(self) -> None:
        if self._group_link_generation == self.link.generation:
            return
        try:
            self._client.xgroup_create(self.stream, protocol.AGENT_GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self.generations.load(self._client, self.env)
        # Our own pending entries first (read from id 0), then entries another consumer
        # name left pending for a long time, then new ones.
        self._cursor = "0"
        claimed = self._client.xautoclaim(
            self.stream, protocol.AGENT_GROUP, self.consumer, min_idle_time=CLAIM_IDLE_MS, start_id="0-0", count=1000
        )
        self._group_link_generation = self.link.generation
        for entry_id, fields in claimed[1] if claimed else []:
            self._receive(entry_id, fields)

    def read_once(self, wait: bool = True) -> int:
        """One XREADGROUP (blocking up to 1 s once the pending entries are read, unless not
        ``wait``); returns how many entries it took. RedisError is the caller's to retry."""
        self._ensure_group()
        block = None if self._cursor == "0" or not wait else READ_BLOCK_MS
        try:
            reply = self._client.xreadgroup(
                protocol.AGENT_GROUP, self.consumer, {self.stream: self._cursor}, count=READ_COUNT, block=block
            )
        except redis.ResponseError as error:
            # The stream or its group was deleted (Redis flushed, key removed while we were
            # blocked on it): create them again and carry on.
            if "NOGROUP" in str(error) or "UNBLOCKED" in str(error):
                self._group_link_generation = -1
                return 0
            raise
        self.link.ok()
        entries = reply[0][1] if reply else []
        if self._cursor == "0":
            if not entries:
                self._cursor = ">"
                return 0
            self._cursor = entries[-1][0]  # keep paging through our pending entries
        for entry_id, fields in entries:
            try:
                self._receive(entry_id, fields)
            except redis.RedisError:
                raise
            except Exception as error:  # one bad entry must not hold up the rest of the batch
                log.exception("cannot handle command entry %s", entry_id)
                reason = f"cannot handle this entry: {error!r}"[:500]
                ack = protocol.Ack(f"entry-{entry_id}", self.env, "error", reason, at=time.time())
                self._acknowledge(ack, entry_id)
        if self._cursor not in ("0", ">") and len(entries) < READ_COUNT:
            self._cursor = ">"
        return len(entries)

    def _already_done(self, command_id: str) -> bool:
        with self._lock:
            if command_id in self._done or command_id in self._inflight:
                return True
        return bool(self._client.exists(keys.done(self.env, command_id)))

    def _receive(self, entry_id: str, fields: dict[str, str] | None) -> None:
        """Validate, de-duplicate, expire, note the generation of and hand over one entry."""
        if fields is None:  # trimmed from the stream while pending
            self._xack(entry_id)
            return
        supervisor_key = self.identity.supervisor_key()
        if not supervisor_key or not protocol.command_signed_by(fields, self.env, supervisor_key):
            self._refuse(entry_id, fields, "supervisor key not known yet" if not supervisor_key else "")
            return
        try:
            command = protocol.Command.decode(fields)
        except protocol.ProtocolError as error:
            self._reject(entry_id, fields, error)
            return
        if self._already_done(command.id):
            with self._lock:
                running = command.id in self._inflight
                if running:  # confirmed together with the original when it finishes
                    self._duplicates.setdefault(command.id, []).append(entry_id)
            if not running:  # a redelivery of something finished: only confirm receipt
                self._xack(entry_id)
            return
        delivery = Delivery(entry_id, command, received_at=time.time())
        if command.expires_at < delivery.received_at:
            self.finish(delivery, "expired", "the command expired before this worker picked it up")
            self.reporter.actual(command.app, command.incarnation)
            return
        self.generations.see(command.app, command.generation, command.incarnation)
        with self._lock:
            self._inflight.add(command.id)
        self._submit(delivery)

    def _refuse(self, entry_id: str, fields: dict[str, str], why: str) -> None:
        """A command not signed by the supervisor: acknowledged ``refused`` under the entry's
        id, echoing nothing of it, and never carried out."""
        reason = why or "not signed by the supervisor's key"
        now = time.monotonic()
        if now - self._refusals_logged_at >= _REFUSAL_LOG_EVERY:
            more = f" ({self._refusals_unlogged} more since the last line)" if self._refusals_unlogged else ""
            log.warning("refusing command entry %s: %s%s", entry_id, reason, more)
            self.identity.note_published()
            self._refusals_logged_at, self._refusals_unlogged = now, 0
        else:
            self._refusals_unlogged += 1
        ack = protocol.Ack(f"entry-{entry_id}", self.env, "refused", reason, at=time.time())
        self._acknowledge(ack, entry_id, quiet=True)

    def _reject(self, entry_id: str, fields: dict[str, str], error: protocol.ProtocolError) -> None:
        """Acknowledge a malformed entry as an error, echoing what of it is safe to echo."""
        command_id = fields.get("id", "")
        if not protocol.COMMAND_ID_RE.match(command_id) or self._already_done(command_id):
            command_id = f"entry-{entry_id}"
        log.warning("malformed command %s: %s", entry_id, error)
        app = fields.get("app", "")
        ack = protocol.Ack(
            command_id,
            self.env,
            "error",
            str(error),
            at=time.time(),
            request_id=str(fields.get("request_id", ""))[: protocol.MAX_REQUEST_ID],
            app=app if is_valid_name(app) else "",
            action=fields.get("action", "")[:20],
        )
        self._acknowledge(ack, entry_id)

    # --- acknowledging ------------------------------------------------------------------------

    def _acknowledge(self, ack: protocol.Ack, entry_id: str, *, quiet: bool = False) -> None:
        """Write the acknowledgement, remember the id as done, then XACK (``Reporter``);
        ``quiet``: no log line (the caller logs, rate-limited)."""
        known = ack.app and ack.generation is not None
        generation = self.generations.get(ack.app, ack.incarnation or "") if known else None
        if not self.reporter.acknowledge(ack, entry_id, generation):
            log.warning("stopping before the acknowledgement of %s could be written", ack.id)
            return
        with self._lock:
            self._done[ack.id] = ack.result
            while len(self._done) > DONE_MEMORY:
                self._done.popitem(last=False)
        if quiet:
            return
        log.info(
            "command %s %s %s: %s%s",
            ack.id,
            "?" if ack.action is None else ack.action,
            "?" if ack.app is None else ack.app,
            ack.result,
            f" ({ack.error})" if ack.error else "",
        )

    def finish(self, delivery: Delivery, result: str, error: str = "") -> None:
        """Acknowledge a command with its result, and any redeliveries read while it ran."""
        command = delivery.command
        ack = protocol.Ack(
            command.id,
            self.env,
            result,
            error,
            at=time.time(),
            request_id=command.request_id,
            app=command.app,
            action=command.action,
            generation=command.generation,
            issued_at=command.issued_at,
            incarnation=command.incarnation or None,
        )
        self._acknowledge(ack, delivery.entry_id)
        with self._lock:
            self._inflight.discard(command.id)
            duplicates = self._duplicates.pop(command.id, [])
        if duplicates:
            try:
                self._xack(*duplicates)
            except redis.RedisError as error_:  # they come back as pending and are confirmed then
                self.link.lost(error_)
