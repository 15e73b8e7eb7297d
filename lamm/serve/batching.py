"""Answer requests that arrive together in one `MultimodalLM.generate` call, from one worker thread.

Every generation in the process goes through the one worker (API and demo alike): the model is
never run from two threads at once. The worker takes the first waiting job and gathers what else
arrives within a short window, up to `max_batch` (it waits only while requests are still being read
and rendered, see `incoming`, or after a batch of several, so a lone request starts at once). It
groups jobs that can share a decode (all greedy ones; sampled ones with equal temperature and top-p
and no seed; a seeded one alone, so its seed replays exactly as in lamm-chat), left-pads each group
into one batch and streams every row to its own sink. The waiting line is bounded: `submit` raises
`QueueFull` beyond it (the API answers 503 with Retry-After).
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from lamm.chat.streaming import ReplyStreamer
from lamm.datasets.processor import ProcessedSample


LOG = logging.getLogger("lamm.serve")


class QueueFull(Exception):
    """More jobs are waiting than the queue holds."""


@dataclass
class Result:
    text: str  # the whole answer as lamm-chat keeps it (the template's `reply`)
    finish_reason: str  # "stop" (end of turn or a stop sequence) or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Job:
    """One prompt to answer. `sink` is called from the worker thread: ("text", str) pieces, then
    ("done", Result) or ("error", str)."""

    row: ProcessedSample
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    sink: Callable[[str, Any], None] = lambda kind, value: None
    cancelled: bool = False  # the client left: its row stops being decoded
    answer: Callable[[str], str] = str.strip  # generated text -> answer: the template's `reply` (end markers cut)

    def group_key(self) -> tuple:
        if self.temperature == 0:
            return ("greedy",)
        if self.seed is not None:
            return ("seeded", id(self))
        return ("sampled", self.temperature, self.top_p)


class StopText:
    """Cuts streamed text at the first stop sequence, holding back a tail that may be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        self.held += piece
        found = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit = True
            out, self.held = self.held[:min(found)], ""
            return out
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.held.endswith(s[:k])), default=0)
        out, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return out

    def flush(self) -> str:
        out, self.held = ("" if self.hit else self.held), ""
        return out


class _BatchDone(Exception):
    """Every row of a batch has its answer (stop sequence, its own max_tokens, or a client gone): stop decoding."""


@dataclass
class _Row:
    """One job's decoding state inside a batch."""

    job: Job
    prompt_tokens: int
    tokenizer: Any
    stop_ids: Sequence[int]
    written: list[str] = field(default_factory=list)
    steps: int = 0
    done: bool = False

    def __post_init__(self) -> None:
        self.stop = StopText(self.job.stop)
        self.streamer = ReplyStreamer(self.tokenizer, self, self.stop_ids)  # writes its stable text to self.write

    def write(self, piece: str) -> None:  # ReplyStreamer's `out`
        shown = self.stop.feed(piece)
        if shown:
            self.written.append(shown)
            self.job.sink("text", shown)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.streamer.end()
        self.write(self.stop.flush())
        reason = "stop" if self.streamer.stopped or self.stop.hit else "length"
        result = Result(self.job.answer("".join(self.written)), reason, self.prompt_tokens, len(self.streamer.ids))
        self.job.sink("done", result)


class _RowsStreamer:
    """The streamer for a batch: hands each row's token to that row, finishes rows as they end."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows

    def put(self, tokens: torch.Tensor) -> None:
        for row, token in zip(self.rows, tokens.reshape(-1)):
            if row.done:
                continue
            if row.job.cancelled:
                row.done = True
                continue
            row.steps += 1
            row.streamer.put(token.reshape(1))
            if row.streamer.stopped or row.stop.hit or row.steps >= row.job.max_new_tokens:
                row.finish()
        if all(row.done for row in self.rows):
            raise _BatchDone

    def end(self) -> None:
        for row in self.rows:
            row.finish()


class BatchQueue:
    """A bounded line of jobs and the worker thread that answers them in batches."""

    def __init__(self, model: Any, collate: Callable, stop_ids: Sequence[int], device: str | torch.device = "cpu",
                 max_batch: int = 8, max_waiting: int = 64, window_seconds: float = 0.025) -> None:
        self.model, self.collate, self.stop_ids = model, collate, list(stop_ids)
        self.device = torch.device(device)
        self.max_batch, self.window = max_batch, window_seconds
        self.waiting: queue.Queue[Job | None] = queue.Queue(maxsize=max_waiting)
        self.batches: deque[int] = deque(maxlen=1024)  # sizes of the latest generate calls (bounded: a server runs for weeks)
        self.batch_count = 0
        self.largest_batch = 0
        self._incoming = 0  # requests being read and rendered: jobs about to arrive
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="lamm-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        try:
            self.waiting.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.waiting.maxsize} requests are already waiting") from None

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Around reading and rendering a request: the worker waits for its job before starting a batch."""
        with self._lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._lock:
                self._incoming -= 1

    def close(self) -> None:
        self.waiting.put(None)
        self._thread.join(timeout=30)

    def _gather(self, first: Job) -> list[Job]:
        jobs = [first]
        deadline = time.monotonic() + self.window
        concurrent = bool(self.batches) and self.batches[-1] > 1  # clients were sending together a moment ago
        while len(jobs) < self.max_batch:
            if not self._incoming and self.waiting.empty() and not concurrent:
                break  # a lone request and nothing on its way: start now
            try:
                job = self.waiting.get(timeout=min(0.002, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    break
                continue
            if job is None:
                self.waiting.put(None)  # close() again after this round
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while True:
            first = self.waiting.get()
            if first is None:
                return
            groups: dict[tuple, list[Job]] = {}
            for job in self._gather(first):
                groups.setdefault(job.group_key(), []).append(job)
            for jobs in groups.values():
                try:
                    self.generate(jobs)
                except Exception as exc:  # one failed batch must not stop the server
                    LOG.exception("generating a batch of %d failed", len(jobs))  # the operator's traceback
                    for job in jobs:
                        job.sink("error", f"generation failed ({type(exc).__name__}); the server's log has the details")

    @torch.inference_mode()
    def generate(self, jobs: list[Job]) -> None:
        """Decode `jobs` (one group) as one left-padded batch."""
        self.batches.append(len(jobs))
        self.batch_count += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        batch = self.collate([job.row for job in jobs]).to(self.device)
        tokenizer = self.model.tokenizer
        rows = [_Row(job, len(job.row.input_ids), tokenizer, self.stop_ids) for job in jobs]
        lead = jobs[0]
        generator = None
        if lead.temperature > 0 and lead.seed is not None:  # as lamm-chat seeds its session's first reply
            generator = torch.Generator(self.device).manual_seed(lead.seed)
        streamer = _RowsStreamer(rows)
        try:
            self.model.generate(batch, max_new_tokens=max(job.max_new_tokens for job in jobs),
                                do_sample=lead.temperature > 0, temperature=lead.temperature or 1.0, top_p=lead.top_p,
                                eos_token_id=self.stop_ids, generator=generator, streamer=streamer)
        except _BatchDone:
            pass
        streamer.end()
