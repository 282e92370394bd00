"""Captions on the library side: per-text embeddings and the clips x captions pairing.

Data flow: ``data.captions.read_captions`` (text and clip-id columns) -> ``embed_clips`` with
``keep`` (one audio embedding per clip) -> ``pair_captions`` (captions of the embedded clips, in
clip order) -> ``embed_texts`` (each distinct caption once, cached per text).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from data.captions import CaptionTable
from hyperbolic.embedding.cache import EmbeddingCache
from hyperbolic.embedding.embeddings import ClipEmbeddings, embed_prompts

log = logging.getLogger(__name__)


@dataclass
class CaptionPairs:
    """The captions of the embedded clips: ``captions[j]`` belongs to clip ``caption_clip[j]``.

    ``texts`` are the distinct caption strings (first-seen order) and ``text_of[j]`` the index of
    ``captions[j]`` among them; identical strings on two clips share one text.
    """

    captions: list[str]
    caption_clip: list[int]
    texts: list[str]
    text_of: list[int]
    clip_ids: list[str]

    def clip_texts(self, num_clips: int) -> list[list[int]]:
        """Each clip's distinct text indices, in caption order."""
        out: list[list[int]] = [[] for _ in range(num_clips)]
        for clip, text in zip(self.caption_clip, self.text_of):
            if text not in out[clip]:
                out[clip].append(text)
        return out


def pair_captions(clips: ClipEmbeddings, table: CaptionTable) -> CaptionPairs:
    captions, owner, ids = [], [], []
    for i, meta in enumerate(clips.metas):
        clip = table.clip_of(meta)
        ids.append(clip.key)
        captions += clip.captions
        owner += [i] * len(clip.captions)
    index: dict[str, int] = {}
    text_of = [index.setdefault(c, len(index)) for c in captions]
    return CaptionPairs(captions, owner, list(index), text_of, ids)


def embed_texts(clap, texts: list[str], *, batch_size: int = 64, cache: EmbeddingCache | None = None,
                stats: dict | None = None) -> torch.Tensor:
    """(M,) texts -> (M, D) float32 CLAP text embeddings, each text as written (no template).

    Each distinct text is looked up in the per-text cache (``EmbeddingCache.captions``), so a
    caption embedded by any earlier run is reused and only new ones are computed. ``stats``
    receives ``reused`` and ``computed`` (distinct texts). A text's embedding may differ in the
    last bits with the batch it was computed in (padding), as for audio.
    """
    distinct = list(dict.fromkeys(texts))
    store = cache.captions(clap) if cache is not None else None
    known = store.load()[0] if store is not None else {}
    todo = [t for t in distinct if t not in known]
    if todo:
        computed = embed_prompts(clap, todo, batch_size=batch_size, cache=None)
        known.update(zip(todo, computed.numpy()))
        if store is not None:
            try:
                store.put(todo, computed)
            except OSError as err:
                log.warning("cannot write the embedding cache (%s); going on without it", err)
    log.info("caption embeddings: %d reused, %d computed", len(distinct) - len(todo), len(todo))
    if stats is not None:
        stats.update(reused=len(distinct) - len(todo), computed=len(todo))
    if not texts:
        return torch.empty(0, clap.embed_dim)
    return torch.from_numpy(np.stack([known[t] for t in texts]).astype(np.float32, copy=False))
