"""Sliding windows: what a row that is full keeps of its history, and re-encoding it.

history ─> [family's prefix, context_keep prompt tokens] + most recent tokens   (capacity // 2)
        ─> run into a scratch cache ─> copied over the row's first positions, the rest given back
"""

from __future__ import annotations

import numpy as np

from .errors import GenerationOptionError
from .requests import Request
from .sequences import Active
from .session import Decoder, KVBuffer


def window_head(request: Request, capacity: int) -> list[int]:
    """What every window keeps of the prompt: its prefix and first `context_keep` tokens;
    refused (GenerationOptionError) when that leaves no room for recent tokens in a window
    of `capacity // 2`."""
    head = request.prompt_ids[: request.prefix_len + request.config.context_keep]
    if len(head) >= capacity // 2:
        raise GenerationOptionError(
            f"context_keep {request.config.context_keep} leaves no room for recent tokens "
            f"in a window of {capacity // 2}",
            option="context_keep",
        )
    return head


def slide_window(ids: list[int], request: Request, capacity: int) -> list[int]:
    """What a full row keeps of its ids: `window_head`, then the most recent tokens,
    `capacity // 2` in all."""
    head = window_head(request, capacity)
    return head + ids[len(ids) - (capacity // 2 - len(head)) :]


def slide_if_full(decoder: Decoder, cache: KVBuffer, active: Active, rows: list[int], capacity: int) -> None:
    """Rows (`rows`: where each of the request's histories is now) with no position left for
    their next token re-encode a window of their history, half the context shorter than they
    were (so re-encoding is paid once per half context); `active.computed` becomes the
    window's length. A request's rows are always equally full."""
    if active.computed < capacity:
        return  # the common step: there is room
    held = active.computed
    for row, history in dict(zip(rows, active.histories)).items():  # beams of one parent share its window
        window = slide_window(history[:-1], active.request, capacity)  # the pending token is fed next
        scratch = decoder.empty(1, len(window))
        decoder.run(scratch, 0, np.array([window], np.int64))
        cache.replace_row(row, scratch.read_positions(0, 0, len(window)), held)
        active.computed = len(window)
