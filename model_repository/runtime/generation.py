"""Server-side text generation for BLIP decoders, batched across requests.

Greedy and beam search follow Hugging Face's ``generate`` rules (repetition penalty on the
logits for greedy and on the log-probabilities for beams, beam candidates ``2 * num_beams``,
finished hypotheses scored with the length penalty, the same early-stop heuristic), so the
tokens are Hugging Face's. The engine decodes every active request in one batch: new
requests join between steps, finished or cancelled ones leave, and rows of different lengths
share the batch through explicit position ids and a self-attention mask over the cache.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlpserve.contract import (
    ATTENTION_MASK,
    ENCODER_HIDDEN_STATES,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    cache_names,
)
from vlpserve.model_repository.runtime.device import DeviceOps, Value, bound_run

logger = logging.getLogger(__name__)

Cache = list[Value]  # one device value per layer and key / value, in layer order

NEG = np.float32(-1.0e9)
MAX_NEW_TOKENS_LIMIT = 256
MAX_BEAMS = 8


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """Decoding options of one request."""

    max_new_tokens: int = 30
    num_beams: int = 1
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(
                f"max_new_tokens must be in 1..{MAX_NEW_TOKENS_LIMIT}, got {self.max_new_tokens}"
            )
        if not 1 <= self.num_beams <= MAX_BEAMS:
            raise ValueError(f"num_beams must be in 1..{MAX_BEAMS}, got {self.num_beams}")
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise ValueError(
                f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}"
            )


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))


def repetition_penalty(scores: np.ndarray, tokens: np.ndarray, penalty: float) -> np.ndarray:
    """Hugging Face's RepetitionPenaltyLogitsProcessor on one row."""
    if penalty == 1.0:
        return scores
    scores = scores.copy()
    seen = np.unique(tokens)
    values = scores[seen]
    scores[seen] = np.where(values < 0, values * np.float32(penalty), values / np.float32(penalty))
    return scores


def topk(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (torch.topk, sorted)."""
    k = min(k, values.size)
    part = np.argpartition(-values, k - 1)[:k]
    return part[np.argsort(-values[part], kind="stable")]


class Search:
    """One request's decoding state; ``rows`` decoder rows are active for it."""

    def __init__(self, prompt: list[int], params: GenerationParams, eos: int) -> None:
        self.params = params
        self.eos = eos
        self.prompt_len = len(prompt)
        self.max_length = self.prompt_len + params.max_new_tokens
        self.done = False

    @property
    def rows(self) -> int:
        raise NotImplementedError

    def last_tokens(self) -> list[int]:
        raise NotImplementedError

    def advance(self, logits: np.ndarray) -> tuple[list[int], list[int]]:
        """Consume logits (rows, V); return (parent row per next row, tokens to stream)."""
        raise NotImplementedError

    def result(self) -> list[int]:
        raise NotImplementedError


class Greedy(Search):
    def __init__(self, prompt: list[int], params: GenerationParams, eos: int) -> None:
        super().__init__(prompt, params, eos)
        self.tokens = list(prompt)

    @property
    def rows(self) -> int:
        return 1

    def last_tokens(self) -> list[int]:
        return [self.tokens[-1]]

    def advance(self, logits: np.ndarray) -> tuple[list[int], list[int]]:
        scores = repetition_penalty(
            logits[0].astype(np.float32), np.array(self.tokens), self.params.repetition_penalty
        )
        token = int(np.argmax(scores))
        self.tokens.append(token)
        self.done = token == self.eos or len(self.tokens) >= self.max_length
        return [0], [token]

    def result(self) -> list[int]:
        return self.tokens


class Beam(Search):
    """Hugging Face's vectorised beam search for one batch item, in numpy."""

    def __init__(self, prompt: list[int], params: GenerationParams, eos: int) -> None:
        super().__init__(prompt, params, eos)
        beams = params.num_beams
        self.cur_len = self.prompt_len
        self.running = np.zeros((beams, self.max_length), dtype=np.int64)
        self.running[:, : self.prompt_len] = prompt
        self.running_scores = np.full(beams, NEG, dtype=np.float32)
        self.running_scores[0] = 0.0
        self.sequences = self.running.copy()
        self.lengths = np.full(beams, self.prompt_len)
        self.scores = np.full(beams, NEG, dtype=np.float32)
        self.finished = np.zeros(beams, dtype=bool)
        self.improvable = True
        self.first = True

    @property
    def rows(self) -> int:
        return 1 if self.first else self.params.num_beams

    def last_tokens(self) -> list[int]:
        return [int(t) for t in self.running[: self.rows, self.cur_len - 1]]

    def advance(self, logits: np.ndarray) -> tuple[list[int], list[int]]:
        beams = self.params.num_beams
        log_probs = log_softmax(logits.astype(np.float32))
        if self.first:  # HF runs num_beams identical rows; the first one stands for all
            log_probs = np.repeat(log_probs[:1], beams, axis=0)
        log_probs = np.stack(
            [
                repetition_penalty(
                    row, self.running[i, : self.cur_len], self.params.repetition_penalty
                )
                for i, row in enumerate(log_probs)
            ]
        )
        vocab = log_probs.shape[1]
        flat = (log_probs + self.running_scores[:, None]).reshape(-1)
        keep = 2 * beams
        index = topk(flat, keep)
        values = flat[index]
        parents = index // vocab
        tokens = index % vocab
        candidates = self.running[parents].copy()
        candidates[:, self.cur_len] = tokens
        hits = (tokens == self.eos) | (self.cur_len + 1 >= self.max_length)
        # Beams that go on: the best candidates that did not stop.
        running_values = values + hits.astype(np.float32) * NEG
        chosen = topk(running_values, beams)
        self.running = candidates[chosen]
        self.running_scores = running_values[chosen]
        # Finished hypotheses: only the top num_beams candidates may finish.
        finishing = hits & (np.arange(keep) < beams)
        length = self.cur_len + 1 - self.prompt_len
        final = values / np.float32(length**self.params.length_penalty)
        if not self.improvable:
            final = final + NEG
        final = final + (~finishing).astype(np.float32) * NEG
        merged = np.concatenate([self.scores, final.astype(np.float32)])
        best = topk(merged, beams)
        self.sequences = np.concatenate([self.sequences, candidates])[best]
        self.lengths = np.concatenate([self.lengths, np.full(keep, self.cur_len + 1)])[best]
        self.scores = merged[best]
        self.finished = np.concatenate([self.finished, finishing])[best]
        self.cur_len += 1
        best_possible = self.running_scores[0] / np.float32(
            (self.cur_len - self.prompt_len) ** self.params.length_penalty
        )
        worst = np.where(self.finished, self.scores.min(), NEG)
        self.improvable = self.improvable and bool(np.any(best_possible > worst))
        self.done = not (self.improvable and not bool(np.all(hits)))
        source = [int(p) for p in parents[chosen]] if not self.first else [0] * beams
        self.first = False
        return source, []

    def result(self) -> list[int]:
        return [int(t) for t in self.sequences[0, : self.lengths[0]]]


def make_search(prompt: list[int], params: GenerationParams, eos: int) -> Search:
    return Greedy(prompt, params, eos) if params.num_beams == 1 else Beam(prompt, params, eos)


class DecoderGraphs:
    """The exported ``decoder_first`` and ``decoder_step`` graphs: two ONNX Runtime sessions
    run by IO binding. Their caches stay on the sessions' device as ``OrtValue``s from step
    to step (``ops`` re-batches them there); token ids, positions and masks go in from the
    host and only the logits come back."""

    def __init__(self, first: Any, step: Any) -> None:
        self.first = first
        self.step = step
        self.ops = DeviceOps(step)
        self.device = self.ops.device
        step_inputs = {i.name: i for i in self.step.get_inputs()}
        self.layers = sum(1 for name in step_inputs if name.endswith(".key")) // 2
        self.self_names, self.cross_names = cache_names(self.layers)
        self.ids_dtype = np.int32 if "int32" in step_inputs[INPUT_IDS].type else np.int64
        self.presents = [n.replace("past", "present") for n in self.self_names]

    def run_first(self, ids: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, Cache, Cache]:
        """Logits of the last prompt position, self cache, cross cache (in layer order)."""
        feeds = {
            INPUT_IDS: ids.astype(self.ids_dtype),
            ATTENTION_MASK: np.ones(ids.shape, dtype=np.int64),
            ENCODER_HIDDEN_STATES: states.astype(np.float32),
        }
        found = bound_run(self.first, feeds, self.device, on_host=[LOGITS])
        own = [found[n] for n in self.presents]
        return found[LOGITS].numpy(), own, [found[n] for n in self.cross_names]

    def run_step(
        self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, own: Cache, cross: Cache
    ) -> tuple[np.ndarray, Cache]:
        feeds: dict[str, Any] = {
            INPUT_IDS: ids.reshape(-1, 1).astype(self.ids_dtype),
            POSITION_IDS: positions.reshape(-1, 1).astype(np.int64),
            ATTENTION_MASK: mask,
        }
        feeds |= dict(zip(self.self_names, own, strict=True))
        feeds |= dict(zip(self.cross_names, cross, strict=True))
        outputs = [LOGITS, *self.presents]
        found = bound_run(self.step, feeds, self.device, on_host=[LOGITS], outputs=outputs)
        return found[LOGITS].numpy(), [found[n] for n in self.presents]


@dataclass(eq=False)
class Job:
    """A generation request handed to the engine."""

    prompt: list[int]
    states: np.ndarray  # (encoder_sequence, hidden)
    params: GenerationParams
    on_tokens: Callable[[list[int]], None] = lambda tokens: None
    on_done: Callable[[list[int] | None, str | None], None] = lambda ids, error: None
    cancelled: Callable[[], bool] = lambda: False
    search: Search | None = field(default=None, repr=False)


class _Group:
    """Active rows whose encoder states have one length, decoded together. The caches are
    device values, re-batched by ``ops``; the mask and positions are small host arrays."""

    def __init__(self, ops: DeviceOps) -> None:
        self.ops = ops
        self.jobs: list[Job] = []
        self.own: Cache = []
        self.cross: Cache = []
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.positions = np.zeros(0, dtype=np.int64)
        # The job each row decodes for: every row of a job has the same cross cache.
        self.owners = np.zeros(0, dtype=np.int64)

    @property
    def rows(self) -> int:
        return int(self.positions.shape[0])

    def add(
        self, jobs: list[Job], own: Cache, cross: Cache, length: int, owners: list[int]
    ) -> None:
        """Append jobs' rows (caches of ``length`` positions, ``owners`` naming each row's
        job), padding the self-attention caches to agree."""
        rows = own[0].shape()[0]
        mask = np.ones((rows, length), dtype=np.int64)
        if self.rows == 0:
            self.own, self.cross, self.mask = own, cross, mask
        else:
            width = max(self.mask.shape[1], length)
            pad = width - self.mask.shape[1]
            self.own = self.ops.pad_left(self.own, pad)
            self.mask = np.pad(self.mask, ((0, 0), (pad, 0)))
            new_pad = width - length
            own = self.ops.pad_left(own, new_pad)
            mask = np.pad(mask, ((0, 0), (new_pad, 0)))
            joined = self.ops.concat([*self.own, *self.cross], [*own, *cross])
            self.own, self.cross = joined[: len(own)], joined[len(own) :]
            self.mask = np.concatenate([self.mask, mask])
        self.positions = np.concatenate([self.positions, np.full(rows, length, dtype=np.int64)])
        self.owners = np.concatenate([self.owners, np.array(owners, dtype=np.int64)])
        self.jobs += jobs

    def select(self, index: list[int]) -> None:
        """Keep rows ``index`` (in that order) and drop cache columns nobody attends to."""
        if index == list(range(self.rows)):
            return
        if not index:  # every job left: the group is dropped
            self.own, self.cross, self.mask = [], [], self.mask[:0, :0]
            self.positions, self.owners = self.positions[:0], self.owners[:0]
            return
        take = np.array(index, dtype=np.int64)
        # Beams re-ordered within their jobs, none left: each row keeps its job, and so its
        # cross cache (the largest part: every encoder position of every layer).
        same_jobs = len(take) == self.rows and np.array_equal(self.owners[take], self.owners)
        layers = len(self.own)
        taken = self.ops.take(self.own if same_jobs else [*self.own, *self.cross], index, axis=0)
        self.own = taken[:layers]
        if not same_jobs:
            self.cross = taken[layers:]
        self.mask = self.mask[take]
        self.positions = self.positions[take]
        self.owners = self.owners[take]
        used = self.mask.any(axis=0)
        if not used.all():
            self.own = self.ops.take(self.own, np.flatnonzero(used).tolist(), axis=2)
            self.mask = self.mask[:, used]


# observe(phase, seconds, rows): the engine reports each decoder call ("first", "step").
Observer = Callable[[str, float, int], None]


def _ignore(phase: str, seconds: float, rows: int) -> None:
    return None


class Engine:
    """Decodes all submitted jobs in one batch on a background thread."""

    def __init__(
        self, graphs: DecoderGraphs, *, eos: int, max_rows: int = 64, observe: Observer = _ignore
    ) -> None:
        self.graphs = graphs
        self.eos = eos
        self.max_rows = max_rows
        self.observe = observe
        self.pending: queue.Queue[Job | None] = queue.Queue()
        self.groups: dict[int, _Group] = {}
        self.steps = 0  # decoder step calls, for tests and statistics
        self.max_batch_rows = 0
        self._unadmitted: list[Job] = []  # taken from the queue when the engine closed
        self._serial = 0  # numbers the admitted jobs (a group's row owners)
        self._closed: str | None = None  # the reason, once closed
        self._thread = threading.Thread(target=self._loop, name="generation", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        if self._closed is not None:
            job.on_done(None, self._closed)
            return
        job.search = make_search(job.prompt, job.params, self.eos)
        self.pending.put(job)

    def close(self, reason: str = "the engine was closed") -> None:
        """Stop decoding; every job not finished yet gets ``reason`` as its error, once:
        the decoding thread ends the jobs it holds (in its groups, or taken from the queue)
        after its current step, and the ones still queued are ended here."""
        self._closed = reason
        self.pending.put(None)
        self._thread.join(timeout=10)
        while True:
            try:
                waiting = self.pending.get_nowait()
            except queue.Empty:
                break
            if waiting is not None:
                waiting.on_done(None, reason)

    def active_rows(self) -> int:
        return sum(g.rows for g in self.groups.values())

    def _loop(self) -> None:
        try:
            self._decode()
        finally:  # closed: the jobs this thread holds end with the reason
            reason = self._closed or "the engine stopped"
            for group in self.groups.values():
                for job in group.jobs:
                    job.on_done(None, reason)
            self.groups.clear()
            for job in self._unadmitted:
                job.on_done(None, reason)
            self._unadmitted = []

    def _decode(self) -> None:
        while True:
            try:
                if not self._admit():
                    return
                for length in list(self.groups):
                    group = self.groups[length]
                    if group.rows:  # empty when every job admitted into it ended at once
                        self._step(group)
                    if group.rows == 0:
                        del self.groups[length]
            except Exception as exc:  # fail every job in flight, keep the engine alive
                logger.exception("generation step failed")
                for group in self.groups.values():
                    for job in group.jobs:
                        job.on_done(None, f"generation failed: {exc}")
                self.groups.clear()

    def _admit(self) -> bool:
        """Start waiting jobs (blocking while idle). False when the engine is closed."""
        if self._closed is not None:  # seen between steps, even with every row taken
            return False
        jobs: list[Job] = []
        block = self.active_rows() == 0
        while self.active_rows() + sum(j.params.num_beams for j in jobs) < self.max_rows:
            try:
                job = self.pending.get(block=block and not jobs)
            except queue.Empty:
                break
            if job is None:
                self._unadmitted = jobs
                return False
            jobs.append(job)
        by_shape: dict[tuple[int, int], list[Job]] = {}
        for job in jobs:
            if job.cancelled():
                job.on_done(None, "cancelled")
                continue
            by_shape.setdefault((len(job.prompt), job.states.shape[0]), []).append(job)
        for (length, states_len), batch in by_shape.items():
            ids = np.array([job.prompt for job in batch], dtype=np.int64)
            states = np.stack([job.states for job in batch])
            started = time.perf_counter()
            logits, own, cross = self.graphs.run_first(ids, states)
            self.observe("first", time.perf_counter() - started, len(batch))
            group = self.groups.setdefault(states_len, _Group(self.graphs.ops))
            going: list[Job] = []
            take: list[int] = []
            owners: list[int] = []
            for row, job in enumerate(batch):
                assert job.search is not None
                source, tokens = job.search.advance(logits[row : row + 1])
                if tokens:
                    job.on_tokens(tokens)
                if job.search.done:
                    job.on_done(job.search.result(), None)
                    continue
                going.append(job)
                take += [row + s for s in source]
                owners += [self._serial] * len(source)
                self._serial += 1
            if going:  # one re-batching call for every job that goes on
                taken = self.graphs.ops.take([*own, *cross], take, axis=0)
                group.add(going, taken[: len(own)], taken[len(own) :], length, owners)
        return True

    def _step(self, group: _Group) -> None:
        tokens = [t for job in group.jobs for t in job.search.last_tokens()]  # type: ignore[union-attr]
        mask = np.concatenate([group.mask, np.ones((group.rows, 1), dtype=np.int64)], axis=1)
        started = time.perf_counter()
        logits, own = self.graphs.run_step(
            np.array(tokens), group.positions, mask, group.own, group.cross
        )
        self.observe("step", time.perf_counter() - started, group.rows)
        self.steps += 1
        self.max_batch_rows = max(self.max_batch_rows, group.rows)
        group.own, group.mask, group.positions = own, mask, group.positions + 1
        keep: list[int] = []
        jobs: list[Job] = []
        offset = 0
        for job in group.jobs:
            search = job.search
            assert search is not None
            rows = search.rows
            if job.cancelled():
                job.on_done(None, "cancelled")
                offset += rows
                continue
            source, new_tokens = search.advance(logits[offset : offset + rows])
            if new_tokens:
                job.on_tokens(new_tokens)
            if search.done:
                job.on_done(search.result(), None)
            else:
                keep += [offset + s for s in source]
                jobs.append(job)
            offset += rows
        group.jobs = jobs
        group.select(keep)
