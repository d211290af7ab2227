"""Batching across requests: one thread runs the model, requests wait in a bounded queue.

Each request hands its texts (already counted in tokens) to :meth:`Batcher.submit` and waits on
a future. The model thread takes queued requests together until their tokens reach the
encoder's budget, embeds them in one :meth:`Encoder.encode` call (which packs them into forward
batches with :func:`jrag.encoder.token_budget_batches`, as for any other caller) and hands each
request its rows. A full queue refuses at once (:class:`QueueFull`): the caller answers 503
rather than letting requests wait without bound.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from jrag.encoder import DEFAULT_BATCH_TOKENS, Encoder
from jrag.errors import JragError

DEFAULT_MAX_QUEUE = 256


class QueueFull(JragError):
    """The model's queue is full: try again shortly."""


@dataclass
class _Job:
    texts: list[str]
    tokens: int
    future: Future = field(default_factory=Future)


class Batcher:
    """Embed the texts of concurrent requests together under one token budget.

    ``model_lock`` is held around every forward pass; other model users (document writes) take
    it too, so the model runs one batch at a time.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.encoder = encoder
        self.max_queue = max_queue
        self.batch_tokens = batch_tokens
        self.model_lock = threading.Lock()
        self._on_batch = on_batch  # (texts, tokens) per model call, for the metrics
        self._queue: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._stopped = False
        self.running = 0  # requests taken by the model thread and not answered yet
        self._thread = threading.Thread(target=self._loop, name="jrag-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for the model."""
        return len(self._queue)

    def submit(self, texts: list[str], tokens: int) -> Future:
        """Queue ``texts`` (``tokens`` in all); the future gives their [n, dim] vectors."""
        job = _Job(list(texts), tokens)
        with self._ready:
            if self._stopped:
                raise QueueFull("the server is stopping")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting for the model")
            self._queue.append(job)
            self._ready.notify()
        return job.future

    def embed(self, texts: list[str], tokens: int) -> np.ndarray:
        """``submit`` and wait for the vectors."""
        return self.submit(texts, tokens).result()

    def close(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify_all()
        self._thread.join(timeout=30)
        for job in self._queue:
            job.future.set_exception(QueueFull("the server is stopping"))
        self._queue.clear()

    def _take(self) -> list[_Job]:
        """The next requests to embed together: at least one, then more while within budget."""
        with self._ready:
            while not self._queue and not self._stopped:
                self._ready.wait()
            if self._stopped:
                return []
            jobs = [self._queue.popleft()]
            total = jobs[0].tokens
            while self._queue and total + self._queue[0].tokens <= self.batch_tokens:
                job = self._queue.popleft()
                jobs.append(job)
                total += job.tokens
            return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                return
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            self.running = len(jobs)
            texts = [t for job in jobs for t in job.texts]
            try:
                with self.model_lock:
                    vectors = self.encoder.encode(texts, batch_tokens=self.batch_tokens)
            except BaseException as err:  # handed to the waiting requests
                for job in jobs:
                    job.future.set_exception(err)
                self.running = 0
                continue
            if self._on_batch is not None:
                self._on_batch(len(texts), sum(j.tokens for j in jobs))
            start = 0
            for job in jobs:
                job.future.set_result(vectors[start : start + len(job.texts)])
                start += len(job.texts)
            self.running = 0
