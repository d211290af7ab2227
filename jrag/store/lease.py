"""One writer at a time per collection: a write lease kept in the collection itself.

Two processes writing one collection would otherwise each start from a document state read
before the other committed, overwrite it with a stale copy and leave the other's rows recorded
nowhere. So every write to a shared collection (a Milvus server, or a ``.db`` served by
``jrag serve``) happens under the collection's lease, a row ``__lease__`` that names its holder
and an expiry, and each write re-reads its document's state under it.

Milvus has no compare-and-set, only writes that the last one wins and Strong reads, so the lease
is taken with Fischer's timed mutual exclusion: read the row; if it is free (absent, expired or
ours), write our claim, wait :data:`SETTLE_S`, read it back, and hold the lease only if the claim
is still ours. Two writers that both saw it free both write within a moment of reading, so
after the wait each reads the same, last, claim: exactly one wins. This holds as long as no
process stalls longer than ``SETTLE_S`` between its read and its write.

A holder reads its claim back before each write of a state row (:meth:`WriteLease.verify`), so
a writer that lost the lease by stalling changes and deletes nothing a reader relies on; it
renews the claim once half its time is gone (a plain write while it is unexpired, so no wait),
and gives the lease back when its batch is written. A killed holder's lease expires after
``seconds`` (at once if it ran on this host and its process is gone); the next writer takes it
over and cleans up what the killed one left (its garbage is recorded in the state rows, see
:mod:`jrag.store.writes`). Clocks of writers on different hosts must agree to well within
``seconds``. A local Milvus Lite ``.db`` needs none of this: its file lock already admits one
process.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

from jrag.errors import StoreError
from jrag.store.connection import Connection
from jrag.store.filters import ids_in
from jrag.store.rows import LEASE_KIND, json_metadata, marker_entity

LEASE_ID = "__lease__"
LEASE_S = float(os.environ.get("JRAG_LEASE_S", "30"))  # how long a silent holder keeps it
SETTLE_S = 0.3  # Fischer's wait: longer than any writer's gap between its read and its write
WAIT_S = float(os.environ.get("JRAG_LEASE_WAIT_S", "3600"))  # how long to wait for another writer
POLL_S = 0.2


class WriteLease:
    """The write lease of one collection, as held (or not) by this process."""

    def __init__(
        self,
        conn: Connection,
        collection: str,
        dim: int,
        *,
        seconds: float = LEASE_S,
        wait_s: float = WAIT_S,
    ) -> None:
        self.conn = conn
        self.collection = collection
        self.dim = dim
        self.seconds = seconds
        self.wait_s = wait_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._expires = 0.0  # our claim's expiry, by our clock; 0 when not held

    def hold(self) -> bool:
        """Hold the lease: renew it if still ours (True), else wait for it and take it anew
        (False: another writer may have written since we last held it)."""
        left = self._expires - time.time()
        if left > self.seconds / 2:
            return True  # ours until it expires: nobody takes an unexpired claim
        if left > SETTLE_S * 2 and self._read().get("owner") == self.owner:
            self._claim()  # still ours: renew with a plain write
            return True
        self._expires = 0.0
        deadline = time.monotonic() + self.wait_s
        while True:
            current = self._read()
            if (
                not current
                or current.get("owner") == self.owner
                or float(current.get("expires", 0)) < time.time()
                or _holder_is_gone(str(current.get("owner", "")))
            ):
                self._claim()
                time.sleep(SETTLE_S)
                if self._read().get("owner") == self.owner:
                    return False
                self._expires = 0.0
            if time.monotonic() > deadline:
                raise StoreError(
                    f"collection '{self.collection}' at {self.conn.display} is being written by "
                    f"{current.get('owner', 'another writer')}; waited {self.wait_s:.0f} s for "
                    "its write lease. Re-run when it is done"
                )
            time.sleep(POLL_S)

    def verify(self) -> bool:
        """True if our claim is still the recorded one, by a real read. A writer that stalled
        past ``SETTLE_S`` while taking the lease may have lost it to another without knowing;
        checked before each state write, it finds out before it changes anything a reader sees
        (unless it stalls again, past ``SETTLE_S``, between this read and that write)."""
        if self._expires - time.time() <= SETTLE_S:
            self._expires = 0.0
            return False
        return self.owns(self._row())

    def owns(self, row: dict[str, Any] | None) -> bool:
        """True if ``row`` (the lease row just read, with its metadata; None if there is none)
        is our unexpired claim."""
        lease = json_metadata(row["metadata"]) if row else {}
        if self._expires - time.time() > SETTLE_S and lease.get("owner") == self.owner:
            return True
        self._expires = 0.0
        return False

    def release(self) -> None:
        """Give the lease back, if it is ours (others then need not wait for it to expire)."""
        if not self._expires:
            return
        self._expires = 0.0
        if self._read().get("owner") == self.owner:
            self.conn.call(
                f"release the write lease of '{self.collection}'",
                self.conn.client.delete, self.collection, ids=[LEASE_ID],
            )  # fmt: skip

    def _row(self) -> dict[str, Any] | None:
        rows = self.conn.call(
            f"read the write lease of '{self.collection}'", self.conn.client.query,
            self.collection, filter=ids_in([LEASE_ID]), output_fields=["metadata"],
            consistency_level="Strong",
        )  # fmt: skip
        return rows[0] if rows else None

    def _read(self) -> dict[str, Any]:
        """The lease row's metadata (its holder and expiry), {} when free."""
        row = self._row()
        return json_metadata(row["metadata"]) if row else {}

    def _claim(self) -> None:
        expires = time.time() + self.seconds
        metadata = {"owner": self.owner, "expires": expires}
        row = marker_entity(LEASE_ID, LEASE_ID, LEASE_KIND, self.dim, metadata=metadata)
        self.conn.call(
            f"take the write lease of '{self.collection}'",
            self.conn.client.upsert, self.collection, [row],
        )  # fmt: skip
        self._expires = expires


def _holder_is_gone(owner: str) -> bool:
    """True if ``owner`` was a process on this host that no longer runs (killed): its lease
    need not be waited out."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False
