"""Full forward batches for the extraction engine (``hyperbolic.embedding.extraction``).

Decoding hands over the needed rows of one unit at a time, in an order that depends on the number
of decoding workers (DataLoader workers take turns). ``FullBatches`` puts the decoded clips back in
the run's order (files in order, rows in order; the needed rows of each file are known from its
label pass) and cuts that sequence into forward batches of ``size`` clips, so every batch is full
except the run's last, and a batch's clips are the same whatever the number of workers (CLAP's
output for a clip changes in the last bits with the batch it sits in).

A needed row stops being waited for when it arrives as a decode failure (``resolve``) or when every
worker has finished its file (``file_done``: a read that failed part-way leaves rows that never
come; the plain read of the damaged file handles them afterwards). Clips that arrive ahead of the
one awaited wait in a reorder buffer; the batch being filled holds at most ``size`` clips. The
buffer's size is not capped: DataLoader workers hand over their items in turn, so it holds what
the other workers decoded while one finished its unit (at most 7 clips were seen waiting with 2
workers, units and batches of 4, on ``tests/test_full_batches.py``'s folder); a worker whose units produce many more
items than the others' (decode failures) lets it grow by those units.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# one decoded clip waiting for the forward: (file index, row, video id, its features, batch dim 1)
Pending = tuple[int, int, str, dict]


class FullBatches:
    """Clips in, forward batches of ``size`` clips out, in the order of ``order``:
    ``[(file index, needed rows in order), ...]`` for the files in the run's order.

    ``forward(clips)`` receives each batch as a list of ``Pending`` (features still per clip);
    ``finished(file)`` is called once for each file whose needed rows have all been forwarded or
    given up, after ``file_done`` for it."""

    def __init__(self, order: list[tuple[int, list[int]]], size: int, *,
                 forward: Callable[[list[Pending]], None], finished: Callable[[int], None]):
        self.order, self.size = order, size
        self.forward = forward  # where each batch goes (a caller may wrap it, e.g. to time it)
        self._finished = finished
        self.waiting: dict[tuple[int, int], Pending] = {}    # the reorder buffer
        self.resolved: set[tuple[int, int]] = set()          # needed rows that failed to decode
        self.done: set[int] = set()                          # files every worker has finished
        self.batch: list[Pending] = []
        self.closing: list[int] = []                         # files passed, some rows still in batch
        self.position = (0, 0)                               # (index in order, index in its rows)

    def add(self, file: int, rows: list[int], video_ids: list[str], features: dict) -> None:
        """The decoded needed rows of one unit (``features`` batched over ``rows``)."""
        for i, (row, video_id) in enumerate(zip(rows, video_ids)):
            self.waiting[(file, row)] = (file, row, video_id, {k: v[i:i + 1] for k, v in features.items()})
        self._advance()

    def resolve(self, file: int, row: int) -> None:
        """A needed row that will not come: it failed to decode."""
        self.resolved.add((file, row))
        self._advance()

    def file_done(self, file: int) -> None:
        """Every worker has finished ``file``: rows of it that have not come will not come."""
        self.done.add(file)
        self._advance()

    def flush(self) -> None:
        """The run's last batch (after the last item of the decoding stream)."""
        if self.batch:
            self._send()
        self._advance()

    def _advance(self) -> None:
        j, r = self.position
        while j < len(self.order):
            file, rows = self.order[j]
            if r == len(rows):
                if file not in self.done:
                    break
                self.closing.append(file)  # finished once the batch holding its last rows is forwarded
                j, r = j + 1, 0
                continue
            key = (file, rows[r])
            if key in self.waiting:
                self.batch.append(self.waiting.pop(key))
                if len(self.batch) == self.size:
                    self.position = (j, r + 1)
                    self._send()
                    j, r = self.position
                    continue
            elif key in self.resolved:
                self.resolved.discard(key)
            elif file not in self.done:
                break
            r += 1
        self.position = (j, r)
        self._close()

    def _send(self) -> None:
        batch, self.batch = self.batch, []
        self.forward(batch)
        self._close()

    def _close(self) -> None:
        held = {p[0] for p in self.batch}
        for file in [f for f in self.closing if f not in held]:
            self.closing.remove(file)
            self._finished(file)


def stack(batch: list[Pending]) -> dict:
    """The features of a batch of ``Pending`` clips, batched again (exact copies)."""
    return {k: torch.cat([p[3][k] for p in batch]) for k in batch[0][3]}
