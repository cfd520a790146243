"""Continuous batching: which sequence each cache slot decodes, when slots are checked, and how a
freed slot is refilled.

Every `CHECK_EVERY` decode steps (or when a sequence must have hit its budget) the host collects
stopped slots and refills them with the next sequences: prefill into those slots only, decode goes
on for the others. Samples of one prompt are prefilled once: the other slots copy its cache columns
and draw their first token from its saved hidden state. Without `refill`, all slots wait for the
slowest (a static batch). Tests patch `CHECK_EVERY` here (`fast.scheduler.CHECK_EVERY`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator

import torch

from copsd.rollout.fast import layout as cache_layout
from copsd.rollout.fast.cache import SlotCache
from copsd.rollout.fast.model import Decoder
from copsd.rollout.types import SamplingParams

CHECK_EVERY = 16  # decode steps between host checks for "every row has stopped"


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Scheduler:
    """One run of sequences `seqs` (a prompt index each; samples of one prompt adjacent) through
    the slots of `cache`, each sequence with its own token budget (`limits`)."""

    def __init__(
        self,
        decoder: Decoder,
        cache: SlotCache,
        prompts: list[list[int]],
        seqs: list[int],
        limits: list[int],
        params: SamplingParams,
        stops: torch.Tensor,
        pad_id: int,
        *,
        refill: bool,
        share: bool,
    ):
        self.decoder, self.cache = decoder, cache
        self.prompts, self.seqs, self.limits = prompts, seqs, limits
        self.params, self.stops, self.pad_id = params, stops, pad_id
        self.refill, self.share = refill, share
        slots = cache.batch
        self.cached = [-1] * slots  # the prompt whose K/V each slot's first columns hold
        self.results: list[list[int] | None] = [None] * len(seqs)
        self.left: dict[int, int] = {}  # prompt -> samples not started yet (its saved hidden state is dropped at 0)
        for p in seqs:
            self.left[p] = self.left.get(p, 0) + 1
        self.held: dict[int, torch.Tensor] = {}  # prompt -> final hidden state of its last prompt token
        self.owner = [-1] * slots  # the sequence each slot decodes (-1: idle)
        self.bound = [0] * slots  # an upper bound of each slot's `pos` (sets the attention bucket)
        self.deadline = [0] * slots  # the decode step by which the slot's sequence has surely ended
        self.queue = 0  # sequences started so far
        self.steps = 0  # decode steps so far
        self.prefill_s = 0.0
        self.useful = 0  # tokens of finished sequences
        self.prefilled = 0  # prompts prefilled

    def decode(self, step: Callable[[int], None]) -> Generator[int, None, list[list[int]]]:
        """Run every sequence through the slots, `step(kv_len)` being one decode step; yields how
        many sequences finished at each check that finished some; returns each one's tokens."""
        self.start(list(range(self.cache.batch)))
        while self.live():
            step(self.kv_len())
            if not self.advance():
                continue
            if done := self.collect():
                yield done
            self.refill_free()
        return self.results  # type: ignore[return-value]

    def live(self) -> bool:
        return any(o >= 0 for o in self.owner)

    def kv_len(self) -> int:
        """The bucket the next decode step attends to (live slots only)."""
        bound = max(x for x, o in zip(self.bound, self.owner) if o >= 0)
        return cache_layout.kv_len(bound, self.cache.capacity, self.decoder.options.flex)

    def advance(self) -> bool:
        """Count a decode step; whether the host should check the slots now: every `CHECK_EVERY`
        steps, or when some live sequence must have reached its budget."""
        self.steps += 1
        last = self.cache.capacity - 1
        self.bound = [min(x + 1, last) if o >= 0 else x for x, o in zip(self.bound, self.owner)]
        due = min(d for d, o in zip(self.deadline, self.owner) if o >= 0)
        return not (self.steps % CHECK_EVERY and self.steps < due)

    def collect(self) -> int:
        """Finished sequences' tokens into `results`, their slots freed; returns how many."""
        c = self.cache
        fin = c.finished.tolist()
        done = [b for b in range(c.batch) if fin[b] and self.owner[b] >= 0]
        if done:
            lens = c.step[done].tolist()
            rows = c.out[done].tolist()
            for b, n, row in zip(done, lens, rows):
                self.results[self.owner[b]] = row[:n]
                self.useful += n
                self.owner[b] = -1
        return len(done)

    def refill_free(self) -> None:
        """Start the next sequences in free slots (static: only once every slot is free)."""
        self.bound = self.cache.pos.tolist()
        free = [b for b in range(self.cache.batch) if self.owner[b] < 0]
        if self.queue < len(self.seqs) and free and (self.refill or len(free) == self.cache.batch):
            self.start(free)

    def start(self, free: list[int]) -> None:
        """The next sequences of the queue into slots `free`."""
        take = self.seqs[self.queue : self.queue + len(free)]
        if not take:
            return
        assign = self._assign(free, take)
        t0 = now(self.decoder.device)
        budget = self.limits[self.queue : self.queue + len(take)]
        self.prefilled += self._begin(assign, budget)
        self.prefill_s += now(self.decoder.device) - t0
        for j, (b, p) in enumerate(assign):
            self.owner[b], self.bound[b] = self.queue + j, len(self.prompts[p])
            self.deadline[b] = self.steps + budget[j] - 1
            self.left[p] -= 1
            if not self.left[p]:
                self.held.pop(p, None)
        self.queue += len(take)

    def _assign(self, free: list[int], take: list[int]) -> list[tuple[int, int]]:
        """(slot, prompt) per sequence: a slot that holds the prompt's cache already, else one
        whose cache no sequence of this start wants."""
        avail, wanted, assign = sorted(free), set(take), []
        for p in take:
            b = next((b for b in avail if self.cached[b] == p), None)
            if b is None:
                b = next((b for b in avail if self.cached[b] not in wanted), avail[0])
            avail.remove(b)
            assign.append((b, p))
        return assign

    def _sources(self, assign: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], dict[int, int]]:
        """(the (slot, prompt) pairs to prefill, the slot each prompt's cache columns come from).
        With `share` a prompt is prefilled once; a slot whose columns get overwritten is no source."""
        if not self.share:
            return list(assign), {}
        moving = {b for b, p in assign if self.cached[b] != p}
        source = {p: b for b, p in enumerate(self.cached) if p >= 0 and b not in moving}
        fill: list[tuple[int, int]] = []  # a prompt no kept slot holds
        for b, p in assign:
            if p not in source:
                source[p] = b
                fill.append((b, p))
        return fill, source

    def _begin(self, assign: list[tuple[int, int]], limits: list[int]) -> int:
        """Start sequences in slots, `assign` = [(slot, prompt index)], each with its own token
        budget: prefill what `_sources` says, copy cache columns to the other samples' slots,
        draw every first token from the prompt's saved hidden state. Returns the rows prefilled."""
        fill, source = self._sources(assign)
        if fill:
            hidden = self.decoder.prefill(
                self.cache, [self.prompts[p] for _, p in fill], [b for b, _ in fill], self.pad_id
            )
            for r, (_, p) in enumerate(fill):
                self.held[p] = hidden[r]
        # sources keep their prompt or were just prefilled: none is a copy target. One gather per
        # layer copies every target's columns up to the longest of these prompts (the columns past a
        # slot's own prompt are masked until its decode overwrites them).
        copy = [
            (source[p], b, len(self.prompts[p]))
            for b, p in assign
            if self.share and self.cached[b] != p and source[p] != b
        ]
        if copy:
            self.cache.copy_columns([c[0] for c in copy], [c[1] for c in copy], max(c[2] for c in copy))
        for b, p in assign:
            self.cached[b] = p
        tok = self.decoder.sample(torch.stack([self.held[p] for _, p in assign]), self.params)
        positions = [len(self.prompts[p]) for _, p in assign]
        self.cache.begin([b for b, _ in assign], tok, positions, limits, self.stops, self.pad_id)
        return len(fill)

    def timing(self) -> dict[str, float]:
        """The run's counts (the engine adds its times)."""
        return {
            "decode_steps": self.steps,
            "useful_tokens": self.useful,
            "slot_steps": self.steps * self.cache.batch,
            "prefilled_prompts": self.prefilled,
        }
