"""The embedded broker: kombu's filesystem transport, made safe for several processes at once.

kombu's own transport (5.x, kombu#1551) creates each message file under its final name and then
writes it, and its consumer claims a file by moving it without taking the writer's lock. The
worker can therefore claim a file the web process or beat has created but not yet filled, read
zero bytes and die with ``JSONDecodeError: Expecting value``, losing that message and, once the
worker is down, every later one. Its exchange tables have the same flaw at creation (opened with
truncation before the lock is taken), so a concurrent reader can find one empty.

Here a producer writes under a name no consumer lists and renames the finished file into place,
a consumer claims a message by renaming it within the spool folder (atomic, so exactly one
consumer wins it), and exchange tables are created without truncation. config/celery.py maps the
``filesystem://`` scheme to this transport.
"""

import contextlib
import logging
import os
import shutil
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


class Channel(filesystem.Channel):
    """Filesystem channel whose message and exchange files are never seen half-written."""

    def _put(self, queue, payload, **kwargs):
        """Put `payload` onto `queue`: write it whole under a hidden name, then rename it."""
        # Zero-padded wall-clock microseconds keep the names in FIFO order when sorted as text,
        # also across a reboot, which restarts kombu's monotonic-clock prefix.
        name = f"{time.time_ns() // 1000:020d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: _get, _size and _purge only match "<prefix>.<queue>.msg".
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "xb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.rename(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue):
        """Claim, read and remove the oldest message of `queue`."""
        suffix = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != suffix:
                continue
            spooled = os.path.join(self.data_folder_in, name)
            # Renaming within one folder is atomic: of several consumers exactly one succeeds.
            # kombu moves the file to the temp folder instead, which on another filesystem is a
            # copy and a delete that two consumers can both perform.
            claimed = os.path.join(self.data_folder_in, f".{name}.claimed")
            try:
                os.rename(spooled, claimed)
            except FileNotFoundError:
                continue  # another consumer took it first
            except OSError as exc:
                raise ChannelError(f"Cannot claim file {spooled!r} from queue.") from exc
            try:
                message = self._read_message(claimed)
            except ValueError as exc:
                self._quarantine(claimed, name, exc)
                continue
            try:
                if self.store_processed:
                    shutil.move(claimed, os.path.join(self.processed_folder, name))
                else:
                    os.remove(claimed)
            except OSError as exc:
                raise ChannelError(f"Cannot remove file {claimed!r} from queue.") from exc
            return message
        raise Empty()

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

    def _quarantine(self, claimed: str, name: str, exc: ValueError) -> None:
        # A file that does not decode never will; keep it for inspection instead of letting it
        # stop the worker or be retried forever.
        folder = self.corrupt_folder
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, name)
        shutil.move(claimed, target)
        logger.error("Moved undecodable broker message to %s: %s", target, exc)

    @property
    def corrupt_folder(self) -> str:
        default = os.path.join(os.path.dirname(os.path.abspath(self.data_folder_in)), "corrupt")
        return self.transport_options.get("corrupt_folder", default)

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
