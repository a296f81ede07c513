"""Length-grouped sampling that is the same for every epoch order and resumable: mega-batches of similar lengths,
shuffled per epoch from the seed."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class LengthGroupedEpochSampler(torch.utils.data.Sampler[int]):
    """Index order with micro-batches of similar length, reproducible per epoch (for exact resume).

    Per epoch: a seeded random permutation, cut into mega-batches of ``mega_batches`` batches; each mega-batch is
    sorted by length, cut into batches of ``batch_size`` and the batch order shuffled. ``batch_size`` is the
    examples per *optimiser step* (micro-batch × accumulation): the examples of a step do not depend on how it is
    split into micro-batches, and consecutive micro-batches stay sorted, so each is of similar length. Less padding than
    ``transformers``' ``LengthGroupedSampler`` (which sorts mega-batches of ``4 × batch`` on small sets) and, unlike
    it, seeded by ``seed + epoch`` rather than the global RNG — so a run resumed in a later epoch sees the same order
    as an uninterrupted one. The Trainer calls :meth:`set_epoch`.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega_batches: int = 64) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega = max(mega_batches, 1) * batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        out: list[int] = []
        for start in range(0, len(perm), self.mega):
            chunk = sorted(perm[start : start + self.mega], key=lambda i: self.lengths[i], reverse=True)
            batches = [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            for b in torch.randperm(len(batches), generator=g).tolist():
                out.extend(batches[b])
        return iter(out)
