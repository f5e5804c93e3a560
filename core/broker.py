"""The embedded broker: kombu's filesystem transport, made safe for several processes at once.

kombu's own transport (5.x, kombu#1551) creates each message file under its final name and then
writes it, and its consumer claims a file by moving it without taking the writer's lock. The
worker can therefore claim a file the web process or beat has created but not yet filled, read
zero bytes and die with ``JSONDecodeError: Expecting value``, losing that message and, once the
worker is down, every later one. Its exchange tables have the same flaw at creation (opened with
truncation before the lock is taken), so a concurrent reader can find one empty. It also deletes
a message as soon as it hands it out, so a worker killed mid-task loses it.

Here a producer writes under a name no consumer lists and renames the finished file into place,
a consumer claims a message by renaming it within the spool folder (atomic, so exactly one
consumer wins it), and exchange tables are created without truncation. config/celery.py maps the
``filesystem://`` scheme to this transport.

Delivery is at-least-once, as with Redis or RabbitMQ and Celery's ``acks_late``: the claim is
named after the consuming process and stays in the spool until the message is acknowledged
(deleted) or rejected (renamed back). Each consumer process holds an exclusive ``flock`` on a
file of its own in the consumers folder for as long as it lives; the kernel drops that lock
however the process ends (SIGKILL and OOM included, and a reboot drops them all), so a lock that
can be taken means its owner is gone, with no PID to be reused. Consumers look for such claims
when they start and every ``claim_recovery_interval`` seconds, and put them back in the queue
under their original name; they also delete the ``.partial`` files of producers that died while
writing. An acknowledged message has no file left and never comes back.
"""

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import threading
import time
import uuid
from pathlib import Path
from queue import Empty

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.transport.filesystem import LOCK_EX, LOCK_SH, exchange_queue_t, lock
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

# A writer that still uses kombu's own transport (a process started before an upgrade) fills a
# file it has already created; a file younger than this that does not decode is read again.
HALF_WRITTEN_GRACE_SECONDS = 2.0
HALF_WRITTEN_POLL_SECONDS = 0.05
# How often a consumer looks for the claims of consumers that are gone. A new consumer looks at
# once, so this only bounds the delay while another worker keeps running; a pass costs one
# listing of the spool and one lock attempt per other consumer.
CLAIM_RECOVERY_INTERVAL_SECONDS = 10.0
# A producer writes a message in one call and renames it at once; a .partial file this old
# belongs to a producer that died. The margin covers a suspended machine: a live producer whose
# file was swept all the same gets an error on its rename, never a silent loss.
STALE_PARTIAL_SECONDS = 3600.0
# Claims named ".<message>.claimed" without an owner come from the previous version of this
# transport, whose consumer kept one for at most HALF_WRITTEN_GRACE_SECONDS.
UNOWNED_CLAIM_GRACE_SECONDS = 5.0

CLAIM_SUFFIX = ".claimed"
PARTIAL_SUFFIX = ".partial"
OWNER_SUFFIX = ".lock"
# A consumer's file while it is being locked; it gets its final name only once locked.
NEW_OWNER_SUFFIX = ".new"


class _Registry:
    """This process's consumer registrations and the messages it has claimed, by spool."""

    def __init__(self):
        self.lock = threading.Lock()
        # consumers folder -> (token, descriptor holding the flock)
        self.owners: dict[str, tuple[str, int]] = {}
        # delivery tag -> (claim path, spool folder, message file name). kombu keys unacked
        # messages by delivery tag too, and its fanout gives every copy the same tag.
        self.claims: dict[str, tuple[str, str, str]] = {}
        # spool folder -> time.monotonic() of the last recovery pass
        self.last_recovery: dict[str, float] = {}

    def forget_after_fork(self) -> None:
        # A forked child (a prefork pool process, a multiprocessing worker) is not the consumer
        # that claimed these messages; keeping the descriptors open would keep the parent looking
        # alive after it died.
        for _token, fd in self.owners.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.__init__()


_registry = _Registry()
os.register_at_fork(after_in_child=_registry.forget_after_fork)


def claim_name(name: str, token: str) -> str:
    return f".{name}.{token}{CLAIM_SUFFIX}"


def parse_claim(filename: str) -> tuple[str, str | None] | None:
    """Return (message file name, owner token or None for an unowned claim), or None."""
    if not (filename.startswith(".") and filename.endswith(CLAIM_SUFFIX)):
        return None
    inner = filename[1 : -len(CLAIM_SUFFIX)]
    if inner.endswith(".msg"):
        return inner, None
    name, _, token = inner.rpartition(".")
    if not name.endswith(".msg") or not token:
        return None
    return name, token


def owner_alive(consumers_folder: str, token: str) -> bool:
    """Whether the consumer `token` still runs: its lock file exists and is locked."""
    try:
        fd = os.open(os.path.join(consumers_folder, token + OWNER_SUFFIX), os.O_RDONLY)
    except FileNotFoundError:
        # A consumer creates its file before its first claim and only a dead one's is removed.
        return False
    try:
        # Shared: two consumers checking at once do not take each other for the owner.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the lock just taken
    return False


def _older_than(path: str, seconds: float, *, now: float, changed: bool = False) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    # ctime moves on rename, which is when a claim was made; mtime is when a file was written.
    return now - (st.st_ctime if changed else st.st_mtime) >= seconds


class Channel(filesystem.Channel):
    """Filesystem channel whose message and exchange files are never seen half-written."""

    def _put(self, queue, payload, **kwargs):
        """Put `payload` onto `queue`: write it whole under a hidden name, then rename it."""
        # Zero-padded wall-clock microseconds keep the names in FIFO order when sorted as text,
        # also across a reboot, which restarts kombu's monotonic-clock prefix.
        name = f"{time.time_ns() // 1000:020d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: _get, _size and _purge only match "<prefix>.<queue>.msg".
        partial = os.path.join(self.data_folder_out, f".{name}{PARTIAL_SUFFIX}")
        try:
            with open(partial, "xb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.rename(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue):
        """Claim and read the oldest message of `queue`; its file stays until ack or reject."""
        folder = self.data_folder_in
        token = self._owner_token()
        self._recover_if_due()
        suffix = f"{queue}.msg"
        for name in sorted(os.listdir(folder)):
            if name.partition(".")[2] != suffix:
                continue
            spooled = os.path.join(folder, name)
            # Renaming within one folder is atomic: of several consumers exactly one succeeds.
            # kombu moves the file to the temp folder instead, which on another filesystem is a
            # copy and a delete that two consumers can both perform.
            claimed = os.path.join(folder, claim_name(name, token))
            try:
                os.rename(spooled, claimed)
            except FileNotFoundError:
                continue  # another consumer took it first
            except OSError as exc:
                raise ChannelError(f"Cannot claim file {spooled!r} from queue.") from exc
            try:
                try:
                    message = self._read_message(claimed)
                    tag = message["properties"]["delivery_tag"]
                except (ValueError, TypeError, KeyError) as exc:
                    self._quarantine(claimed, name, exc)
                    continue
            except BaseException:
                # Not read (too many open files, say): the claim goes back to the queue. Left
                # claimed, it would wait for this live process to exit, since recovery only
                # takes the claims of dead consumers.
                with contextlib.suppress(OSError):
                    os.rename(claimed, spooled)
                raise
            _registry.claims[tag] = (claimed, folder, name)
            return message
        raise Empty()

    def basic_consume(self, queue, no_ack, callback, consumer_tag, **kwargs):
        if no_ack:
            # Nobody will acknowledge these (Celery's broadcast and event queues): delivered
            # means done, as on a real broker, and a crash must not replay them.
            def settle_then(message, callback=callback):
                self._settle(message.delivery_tag)
                return callback(message)

            return super().basic_consume(queue, no_ack, settle_then, consumer_tag, **kwargs)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_get(self, queue, no_ack=False, **kwargs):
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack:
            self._settle(message.delivery_tag)
        return message

    def basic_ack(self, delivery_tag, multiple=False):
        self._settle(delivery_tag)
        super().basic_ack(delivery_tag, multiple=multiple)

    def basic_reject(self, delivery_tag, requeue=False):
        if not requeue:
            self._settle(delivery_tag)
        # With requeue, kombu calls _restore, which puts the claimed file back.
        super().basic_reject(delivery_tag, requeue=requeue)

    def _restore(self, message):
        """Put `message` back in its queue: the claimed file under its original name."""
        entry = _registry.claims.pop(message.delivery_tag, None)
        if entry is None:
            return super()._restore(message)
        claimed, folder, name = entry
        try:
            os.rename(claimed, os.path.join(folder, name))
        except FileNotFoundError:
            logger.warning("Broker claim %s was gone when its message was requeued", claimed)
        except OSError as exc:
            raise ChannelError(f"Cannot requeue file {claimed!r}.") from exc
        return None

    def _settle(self, delivery_tag) -> None:
        """Remove the claimed file of an acknowledged or discarded message: it never returns."""
        entry = _registry.claims.pop(delivery_tag, None)
        if entry is None:
            return
        claimed, _folder, name = entry
        try:
            if self.store_processed:
                shutil.move(claimed, os.path.join(self.processed_folder, name))
            else:
                os.remove(claimed)
        except FileNotFoundError:
            # Only recovery renames another consumer's claim, and only once that one is gone.
            logger.warning("Broker claim %s was gone when its message was settled", claimed)
        except OSError as exc:
            raise ChannelError(f"Cannot remove file {claimed!r} from queue.") from exc

    def _read_message(self, path: str):
        """Decode the message in `path`, waiting briefly for a writer that is still filling it."""
        while True:
            try:
                with open(path, "rb") as f:
                    # kombu's own writer holds this lock while it writes; ours never needs it.
                    lock(f, LOCK_SH)
                    raw = f.read()
            except OSError as exc:
                raise ChannelError(f"Cannot read file {path!r} from queue.") from exc
            try:
                return loads(bytes_to_str(raw))
            except ValueError:
                if time.time() - os.stat(path).st_mtime >= HALF_WRITTEN_GRACE_SECONDS:
                    raise
            time.sleep(HALF_WRITTEN_POLL_SECONDS)

    def _quarantine(self, claimed: str, name: str, exc: Exception) -> None:
        # A file that does not decode never will; keep it for inspection instead of letting it
        # stop the worker or be retried forever.
        folder = self.corrupt_folder
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, name)
        shutil.move(claimed, target)
        logger.error("Moved undecodable broker message to %s: %r", target, exc)

    # --- Consumers and recovery ---------------------------------------------------------------

    def _owner_token(self) -> str:
        """This process's token as a consumer of the spool, registering it on first use."""
        folder = self.consumers_folder
        owner = _registry.owners.get(folder)
        if owner is not None:
            return owner[0]
        with _registry.lock:
            owner = _registry.owners.get(folder)
            if owner is None:
                owner = self._register_owner(folder)
                _registry.owners[folder] = owner
        return owner[0]

    @staticmethod
    def _register_owner(folder: str) -> tuple[str, int]:
        # The pid only helps an operator reading the folder; liveness is the lock alone.
        token = f"{os.getpid()}-{secrets.token_hex(8)}"
        new = os.path.join(folder, f".{token}{NEW_OWNER_SUFFIX}")
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise ChannelError(f"Cannot register a consumer in {folder!r}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"pid {os.getpid()}\n".encode())
            # Under its final name the file is locked from the first moment anyone can see it,
            # so no other consumer can take it for a dead one's.
            os.rename(new, os.path.join(folder, token + OWNER_SUFFIX))
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(new)
            raise ChannelError(f"Cannot register a consumer in {folder!r}") from exc
        return token, fd

    def _recover_if_due(self) -> None:
        folder = self.data_folder_in
        now = time.monotonic()
        last = _registry.last_recovery.get(folder)
        if last is not None and now - last < self.claim_recovery_interval:
            return
        _registry.last_recovery[folder] = now
        try:
            self.recover()
        except OSError:
            # Consuming goes on; the next pass tries again.
            logger.exception("Broker claim recovery in %s failed", folder)

    def recover(self) -> dict[str, int]:
        """Requeue the claims of consumers that are gone and delete abandoned partial files."""
        folder = self.data_folder_in
        consumers = self.consumers_folder
        own = self._owner_token()
        now = time.time()
        alive: dict[str, bool] = {own: True}
        requeued: dict[str | None, int] = {}
        swept = 0
        for filename in os.listdir(folder):
            if not filename.startswith("."):
                continue
            path = os.path.join(folder, filename)
            if filename.endswith(PARTIAL_SUFFIX):
                if _older_than(path, STALE_PARTIAL_SECONDS, now=now):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        swept += 1
                continue
            parsed = parse_claim(filename)
            if parsed is None:
                continue
            name, token = parsed
            if token is None:
                if not _older_than(path, UNOWNED_CLAIM_GRACE_SECONDS, now=now, changed=True):
                    continue
            else:
                if token not in alive:
                    alive[token] = owner_alive(consumers, token)
                if alive[token]:
                    continue
            try:
                # Back under its own name, so it keeps its place in the queue.
                os.rename(path, os.path.join(folder, name))
            except FileNotFoundError:
                continue  # another consumer requeued it first
            requeued[token] = requeued.get(token, 0) + 1
        for token, count in requeued.items():
            logger.warning(
                "Requeued %d broker message(s) claimed by consumer %s, which is gone",
                count,
                token or "of an earlier version",
            )
        if swept:
            logger.warning("Deleted %d partial broker message file(s) left by a dead writer", swept)
        return {
            "requeued": sum(requeued.values()),
            "partials": swept,
            "consumers": self._forget_dead_consumers(alive, now=now),
        }

    def _forget_dead_consumers(self, alive: dict[str, bool], *, now: float) -> int:
        # Runs after the claims pass has put a dead consumer's messages back; were one left, its
        # claim would still be requeued later, since a missing owner file means a dead owner.
        folder = self.consumers_folder
        removed = 0
        try:
            filenames = os.listdir(folder)
        except FileNotFoundError:
            return 0
        for filename in filenames:
            path = os.path.join(folder, filename)
            if filename.endswith(OWNER_SUFFIX) and not filename.startswith("."):
                token = filename[: -len(OWNER_SUFFIX)]
                if alive[token] if token in alive else owner_alive(folder, token):
                    continue
            elif not (
                filename.endswith(NEW_OWNER_SUFFIX)
                and _older_than(path, STALE_PARTIAL_SECONDS, now=now)
            ):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed += 1
        return removed

    @property
    def corrupt_folder(self) -> str:
        default = os.path.join(os.path.dirname(os.path.abspath(self.data_folder_in)), "corrupt")
        return self.transport_options.get("corrupt_folder", default)

    @property
    def consumers_folder(self) -> str:
        default = os.path.join(os.path.dirname(os.path.abspath(self.data_folder_in)), "consumers")
        return self.transport_options.get("consumers_folder", default)

    @property
    def claim_recovery_interval(self) -> float:
        return float(
            self.transport_options.get("claim_recovery_interval", CLAIM_RECOVERY_INTERVAL_SECONDS)
        )

    def get_table(self, exchange):
        file = self._exchange_file(exchange)
        try:
            with file.open("rb") as f:
                lock(f, LOCK_SH)
                raw = f.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc
        # An empty table is one that _queue_bind has created and not yet filled: nothing was
        # bound before it, exactly as when the file does not exist.
        if not raw.strip():
            return []
        return [exchange_queue_t(*q) for q in loads(bytes_to_str(raw))]

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        file = self._exchange_file(exchange)
        Path(self.control_folder).mkdir(parents=True, exist_ok=True)
        binding = exchange_queue_t(routing_key or "", pattern or "", queue or "")
        try:
            # O_CREAT without O_TRUNC: kombu opens a new table with "wb", which can empty one that
            # another process created and filled a moment earlier.
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o666)
            with os.fdopen(fd, "r+b", buffering=0) as f:
                lock(f, LOCK_EX)
                raw = f.read()
                queues = [exchange_queue_t(*q) for q in loads(bytes_to_str(raw))] if raw else []
                if binding not in queues:
                    queues.insert(0, binding)
                    f.seek(0)
                    f.truncate()
                    f.write(str_to_bytes(dumps(queues)))
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc


class Transport(filesystem.Transport):
    """kombu's filesystem transport with :class:`Channel`."""

    Channel = Channel
