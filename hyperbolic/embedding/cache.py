"""On-disk cache of frozen-CLAP embeddings: a clip or a prompt set is embedded once per model.

An embedding is a function of the model weights, the preprocessing and the input, so those are
the key; a change in any of them is a miss, never a stale hit.

Layout under the cache root (``default_cache_dir()``)::

    digests/<sha256(what)[:32]>.json                 memo: file stat -> sha256 of the bytes
    <model[:16]>/<audio_prep[:16]>/audio/<parquet sha256[:32]>/<chunk>.npz
    <model[:16]>/text/<tokenizer[:16]>/<sha256(prompts)[:32]>.npz
    <model[:16]>/text/<tokenizer[:16]>/captions/<time>-<random>.npz   single texts (CaptionStore)

- model: ``FrozenClap.fingerprint()`` (sha256 of the weight files). Hashing 1.7 GB takes
  seconds, so it is memoised under ``digests/`` by the weight files' (size, mtime_ns, ctime_ns,
  inode); touching or replacing a weight file rehashes it.
- audio_prep: ``data.audio.PREPROCESSING`` (decode, downmix, resample, crop) and the feature
  extractor's config (mel bins, window, padding, truncation); with ``--segment``, the window rule
  (``data.audio.Segmenting.key()``); with ``--precision`` other than fp32, the precision. The
  defaults (fp32, first 10 s) add nothing, so caches written before those options existed hit.
- parquet sha256: the bytes of the whole file, memoised like the weights. A renamed, moved or
  copied file still hits; a rewritten one misses. A clip is then (file sha256, row), and the
  stored video_id is checked against the one read.
- tokenizer: the tokenizer's files and class (and the precision, as for audio); a prompt set is
  keyed by its exact strings.
- both audio_prep and tokenizer also hold the sha256 of the model's ``config.json`` (the
  architecture the weights are loaded into) and the versions of the libraries that compute an
  embedding (``library_versions``: transformers and torch; for audio also soxr, soundfile and
  libsndfile), so an edited config or an upgrade is a miss, never a stale hit. The key of each
  (model folder, audio or text) is remembered under ``keys/``; when it changes, the run logs
  which parts changed.

A parquet file's entry is a folder of chunks, each a set of rows and their outcome: an
embedding, or the reason the row could not be embedded (a decode failure, a non-finite
embedding), so a warm run reproduces the skip counts without decoding. Chunks are written while
a file is being embedded, so an interrupted run resumes where it stopped, and merged into one
when the file is done. Every file is written atomically (``outputs.atomic_write_bytes``) and
carries the sha256 of its arrays; a file that fails to load or to verify is logged, deleted and
its rows computed again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import logging
import os
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data import audio as audio_rules
from hyperbolic.embedding.clap import WEIGHT_SUFFIXES
from hyperbolic.outputs import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

CACHE_ENV = "HYPERBOLIC_CLAP_CACHE"
# Bump when what is stored, or how an embedding is computed from the keys (e.g. the tokenizer
# call in FrozenClap.embed_text), changes: every old entry then misses.
CACHE_FORMAT = 1
_CHUNK_ARRAYS = ("rows", "video_ids", "reasons", "details", "embeddings")
_CHUNK_OPTIONAL = ("seconds",)  # the recording's length (NaN: unknown); chunks before it lack it


def default_cache_dir() -> Path:
    """``$HYPERBOLIC_CLAP_CACHE`` if set, else ``~/.cache/hyperbolic_clap``."""
    return Path(os.environ.get(CACHE_ENV, "~/.cache/hyperbolic_clap")).expanduser()


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.ndarray, np.generic)):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot put {type(x).__name__} into a cache key")


def key_digest(obj: Any) -> str:
    """sha256 of canonical JSON (sorted keys): the same settings give the same key."""
    return _sha256_text(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable))


def _forward_precision(clap) -> dict[str, Any]:
    """The forward's precision, when it is not the default fp32 (so fp32 keys stay as they were)."""
    precision = getattr(clap, "precision", "fp32")
    return {} if precision == "fp32" else {"precision": precision}


def library_versions(*, audio: bool) -> dict[str, str]:
    """Versions of the libraries an embedding depends on: transformers and torch run the
    forward; soxr resamples and soundfile/libsndfile decode the audio."""
    # The installed distribution's version, not transformers.__version__: the same string, without
    # importing transformers (seconds) in a warm run that never uses it.
    versions = {"transformers": importlib.metadata.version("transformers"), "torch": torch.__version__}
    if audio:
        import soundfile
        import soxr
        versions.update(soxr=soxr.__version__, soundfile=soundfile.__version__,
                        libsndfile=soundfile.__libsndfile_version__)
    return versions


def _model_config(clap) -> dict[str, Any]:
    """sha256 of the model folder's config.json (None when there is none)."""
    path = Path(clap.path) / "config.json"
    return {"config_json": _file_sha256(path) if path.is_file() else None}


def processor_parts(clap) -> dict[str, Any]:
    """What the keys read from the processor: the feature extractor's settings, the tokenizer's
    class and its vocabulary file names (JSON-normalised, as ``key_digest`` writes them)."""
    tokenizer = clap.processor.tokenizer
    parts = {"feature_extractor": clap.processor.feature_extractor.to_dict(),
             "tokenizer": type(tokenizer).__name__,
             "vocab_files": sorted(set(getattr(tokenizer, "vocab_files_names", {}).values()))}
    return json.loads(json.dumps(parts, default=_jsonable))


def audio_preprocessing(clap, segmenting: audio_rules.Segmenting | None = None, *,
                        parts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything besides the weights that decides a clip's embedding. ``parts``: the
    ``processor_parts`` of ``clap`` when known already (``EmbeddingCache.processor_key``)."""
    parts = processor_parts(clap) if parts is None else parts
    key = {"format": CACHE_FORMAT, "preprocessing": dict(audio_rules.PREPROCESSING),
           "feature_extractor": parts["feature_extractor"], **_forward_precision(clap),
           "model_config": _model_config(clap), "libraries": library_versions(audio=True)}
    if segmenting is not None:
        key["segment"] = segmenting.key()
    return key


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def text_preprocessing(clap, *, parts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything besides the weights that decides a prompt's embedding: the tokenizer.
    ``parts`` as for ``audio_preprocessing``."""
    parts = processor_parts(clap) if parts is None else parts
    names = set(parts["vocab_files"])
    names |= {"tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"}
    files = {name: _file_sha256(Path(clap.path) / name) for name in sorted(names)
             if (Path(clap.path) / name).is_file()}
    return {"format": CACHE_FORMAT, "tokenizer": parts["tokenizer"], "files": files,
            **_forward_precision(clap), "model_config": _model_config(clap),
            "libraries": library_versions(audio=False)}


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, to name what changed in a key."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class CacheFileDamaged(ValueError):
    """A cache file that cannot be loaded or does not match its checksum."""


def _payload_sha256(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def encode_npz(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz of ``arrays`` plus a JSON ``meta`` that carries the arrays' sha256 (no pickles)."""
    meta = {**meta, "payload_sha256": _payload_sha256(arrays)}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    return buffer.getvalue()


def decode_npz(data: bytes, names: tuple[str, ...],
               optional: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Inverse of ``encode_npz``; CacheFileDamaged when unreadable, incomplete or not verified.
    ``optional``: arrays read when present (files written before they existed lack them)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"][()]))
            arrays = {name: npz[name] for name in (*names, *(n for n in optional if n in npz.files))}
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError) as e:
        raise CacheFileDamaged(f"cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or meta.get("payload_sha256") != _payload_sha256(arrays):
        raise CacheFileDamaged("its arrays do not match the sha256 stored with them")
    return meta, arrays


def _read_verified(path: Path, names: tuple[str, ...], expect: dict[str, Any], optional: tuple[str, ...] = ()):
    """``(meta, arrays)`` of a cache file, or None if it vanished or was damaged (then deleted)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # merged away by a concurrent run
        return None
    try:
        meta, arrays = decode_npz(data, names, optional)
        wrong = {k: meta.get(k) for k, v in expect.items() if meta.get(k) != v}
        if wrong:
            raise CacheFileDamaged(f"it belongs to another key ({wrong})")
    except CacheFileDamaged as e:
        log.warning("embedding cache file %s is damaged: %s; deleting it, its embeddings will be "
                    "computed again", path, e)
        path.unlink(missing_ok=True)
        return None
    return meta, arrays


@dataclass(frozen=True)
class RowOutcome:
    """What embedding one parquet row gave: an embedding, or the reason there is none."""

    row: int
    video_id: str
    embedding: np.ndarray | None  # (D,) float32 when the row was embedded
    reason: str = ""              # SkipLog reason when it was not ("decode_error", ...)
    detail: str = ""
    seconds: float = float("nan")  # the recording's length before any crop (NaN: not known)


@dataclass
class FileRecord:
    """All the cached outcomes of one parquet file (by row), from all its chunks."""

    outcomes: dict[int, RowOutcome]
    damaged: bool  # a decoding read of the file failed part-way ("unreadable_file")
    chunks: list[Path]


class AudioStore:
    """Clip embeddings of one (model, audio preprocessing) pair, by parquet file sha256."""

    def __init__(self, folder: Path, *, model: str, prep: str, dim: int):
        self.folder, self.model, self.prep, self.dim = folder, model, prep, dim

    def _file_folder(self, file_sha256: str) -> Path:
        return self.folder / file_sha256[:32]

    def load(self, file_sha256: str) -> FileRecord:
        chunks = sorted(self._file_folder(file_sha256).glob("*.npz"))
        outcomes: dict[int, RowOutcome] = {}
        damaged, read = False, []
        expect = {"kind": "audio", "format": CACHE_FORMAT, "model": self.model, "prep": self.prep,
                  "file_sha256": file_sha256, "dim": self.dim}
        for path in chunks:
            loaded = _read_verified(path, _CHUNK_ARRAYS, expect, _CHUNK_OPTIONAL)
            if loaded is None:
                continue
            meta, a = loaded
            n = len(a["rows"])
            if any(len(a[k]) != n for k in a) or a["embeddings"].shape != (n, self.dim):
                log.warning("embedding cache file %s has inconsistent arrays; deleting it", path)
                path.unlink(missing_ok=True)
                continue
            read.append(path)
            damaged |= bool(meta.get("damaged"))
            for i, row in enumerate(a["rows"].tolist()):
                reason, detail = str(a["reasons"][i]), str(a["details"][i])
                embedding = None if reason else a["embeddings"][i]
                seconds = float(a["seconds"][i]) if "seconds" in a else float("nan")
                outcomes[row] = RowOutcome(row, str(a["video_ids"][i]), embedding, reason, detail, seconds)
        return FileRecord(outcomes, damaged, read)

    def write(self, file_sha256: str, outcomes: list[RowOutcome], *, file_name: str = "",
              damaged: bool = False) -> Path | None:
        """One new chunk holding ``outcomes``; None when there is nothing to say."""
        if not outcomes and not damaged:
            return None
        outcomes = sorted(outcomes, key=lambda o: o.row)
        emb = np.zeros((len(outcomes), self.dim), dtype=np.float32)
        for i, o in enumerate(outcomes):
            if o.embedding is not None:
                emb[i] = o.embedding
        arrays = {
            "rows": np.array([o.row for o in outcomes], dtype=np.int64),
            "video_ids": np.array([o.video_id for o in outcomes], dtype=np.str_).reshape(-1),
            "reasons": np.array([o.reason for o in outcomes], dtype=np.str_).reshape(-1),
            "details": np.array([o.detail for o in outcomes], dtype=np.str_).reshape(-1),
            "embeddings": emb,
            "seconds": np.array([o.seconds for o in outcomes], dtype=np.float64),
        }
        meta = {"kind": "audio", "format": CACHE_FORMAT, "model": self.model, "prep": self.prep,
                "file_sha256": file_sha256, "file_name": file_name, "dim": self.dim,
                "damaged": damaged}
        # Names sort by creation time; of two chunks that hold a row, the newer one wins on load.
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        return atomic_write_bytes(self._file_folder(file_sha256) / name, encode_npz(meta, arrays))

    def compact(self, file_sha256: str, *, file_name: str = "") -> None:
        """Merge a file's chunks into one (fewer files to open on the next run)."""
        record = self.load(file_sha256)
        if len(record.chunks) > 1:
            self.write(file_sha256, list(record.outcomes.values()), file_name=file_name,
                       damaged=record.damaged)
            for path in record.chunks:
                path.unlink(missing_ok=True)


class TextStore:
    """Prompt-set embeddings of one (model, tokenizer) pair, by the exact prompt strings."""

    def __init__(self, folder: Path, *, model: str, prep: str):
        self.folder, self.model, self.prep = folder, model, prep

    def _path(self, texts: list[str]) -> Path:
        return self.folder / f"{key_digest(list(texts))[:32]}.npz"

    def get(self, texts: list[str]) -> torch.Tensor | None:
        path = self._path(texts)
        if not path.is_file():
            return None
        expect = {"kind": "text", "format": CACHE_FORMAT, "model": self.model, "prep": self.prep}
        loaded = _read_verified(path, ("texts", "embeddings"), expect)
        if loaded is None:
            return None
        _, a = loaded
        if a["texts"].tolist() != list(texts):  # a digest-prefix collision: treat as a miss
            return None
        return torch.from_numpy(np.array(a["embeddings"], dtype=np.float32))

    def put(self, texts: list[str], embeddings: torch.Tensor) -> Path:
        arrays = {"texts": np.array(list(texts), dtype=np.str_).reshape(-1),
                  "embeddings": embeddings.detach().cpu().numpy().astype(np.float32, copy=False)}
        meta = {"kind": "text", "format": CACHE_FORMAT, "model": self.model, "prep": self.prep}
        return atomic_write_bytes(self._path(texts), encode_npz(meta, arrays))


class CaptionStore:
    """Embeddings of single texts (captions) of one (model, tokenizer) pair, by the exact string.

    Chunks ``<time>-<random>.npz`` of (texts, embeddings); a run loads every chunk, looks each
    text up, and writes the texts it computed as one new chunk, so adding a caption to 50,000
    computes one embedding. Beyond ``MAX_CHUNKS`` chunks they are merged into one.
    """

    MAX_CHUNKS = 32

    def __init__(self, folder: Path, *, model: str, prep: str):
        self.folder, self.model, self.prep = folder, model, prep
        self._expect = {"kind": "captions", "format": CACHE_FORMAT, "model": model, "prep": prep}

    def _chunks(self) -> list[Path]:
        return sorted(self.folder.glob("*.npz"))

    def load(self) -> tuple[dict[str, np.ndarray], list[Path]]:
        """``({text: (D,) float32}, chunks read)``; of two chunks holding a text, the older wins."""
        known: dict[str, np.ndarray] = {}
        read = []
        for path in self._chunks():
            loaded = _read_verified(path, ("texts", "embeddings"), self._expect)
            if loaded is None:
                continue
            _, a = loaded
            if a["embeddings"].ndim != 2 or len(a["texts"]) != len(a["embeddings"]):
                log.warning("embedding cache file %s has inconsistent arrays; deleting it", path)
                path.unlink(missing_ok=True)
                continue
            read.append(path)
            for text, emb in zip(a["texts"].tolist(), a["embeddings"]):
                known.setdefault(text, emb)
        return known, read

    def put(self, texts: list[str], embeddings: torch.Tensor) -> Path | None:
        """One new chunk with ``texts``; merges the chunks when there are too many."""
        if not texts:
            return None
        arrays = {"texts": np.array(list(texts), dtype=np.str_).reshape(-1),
                  "embeddings": embeddings.detach().cpu().numpy().astype(np.float32, copy=False)}
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        path = atomic_write_bytes(self.folder / name, encode_npz(self._expect, arrays))
        if len(self._chunks()) > self.MAX_CHUNKS:
            self.compact()
        return path

    def compact(self) -> None:
        known, read = self.load()
        if len(read) > 1:
            texts = list(known)
            arrays = {"texts": np.array(texts, dtype=np.str_).reshape(-1),
                      "embeddings": np.stack([known[t] for t in texts]).astype(np.float32, copy=False)}
            # Named before every chunk it replaces' successors, after those it replaces.
            name = f"{read[-1].stem.split('-')[0]}-{uuid.uuid4().hex[:8]}m.npz"
            atomic_write_bytes(self.folder / name, encode_npz(self._expect, arrays))
            for path in read:
                path.unlink(missing_ok=True)


class EmbeddingCache:
    """The cache root; hands out the stores for a model. ``EmbeddingCache()`` uses the default root."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self._memo: dict[tuple, str] = {}

    def _memoised(self, what: str, stat: Callable[[], Any], compute: Callable[[], str]) -> str:
        """``compute()``, remembered on disk for as long as ``stat()`` stays the same."""
        before = stat()
        key = (what, json.dumps(before))
        if key in self._memo:
            return self._memo[key]
        memo = self.root / "digests" / f"{_sha256_text(what)[:32]}.json"
        try:
            saved = json.loads(memo.read_text(encoding="utf-8"))
            if saved.get("what") == what and saved.get("stat") == before:
                self._memo[key] = saved["sha256"]
                return saved["sha256"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # no memo yet, or a damaged one: compute again
        value = compute()
        if stat() == before:  # changed while being hashed: do not remember a digest of torn bytes
            atomic_write_json(memo, {"what": what, "stat": before, "sha256": value})
            self._memo[key] = value
        return value

    def file_digest(self, path: str | Path) -> str:
        """sha256 of a file's bytes, rehashed only when its stat changes."""
        path = Path(path).resolve()
        return self._memoised(f"file:{path}", lambda: _stat(path), lambda: _file_sha256(path))

    def model_fingerprint(self, clap) -> str:
        """``clap.fingerprint()``, rehashed only when a weight file's stat changes."""
        folder = Path(clap.path).resolve()

        def stat():
            return [[p.name, *_stat(p)] for p in sorted(folder.iterdir())
                    if p.suffix in WEIGHT_SUFFIXES and p.is_file()]

        return self._memoised(f"model:{folder}", stat, clap.fingerprint)

    def processor_key(self, clap) -> dict[str, Any]:
        """``processor_parts(clap)``, remembered on disk while the model folder's other files
        (configs, vocabularies) and the transformers version stay the same: a warm run then
        never loads the processor, nor imports transformers. A processor already in memory
        (loaded, or given to ``FrozenClap``, perhaps changed since) is read directly."""
        if getattr(clap, "_processor_loader", None) is None:
            return processor_parts(clap)
        folder = Path(clap.path).resolve()

        def stat():
            files = [[p.name, *_stat(p)] for p in sorted(folder.iterdir())
                     if p.suffix not in WEIGHT_SUFFIXES and p.is_file()]
            return {"files": files, "transformers": importlib.metadata.version("transformers")}

        return json.loads(self._memoised(f"processor:{folder}", stat, lambda: json.dumps(processor_parts(clap))))

    def _note_key(self, kind: str, clap, key: dict[str, Any]) -> None:
        """Log what changed since the last key of this model folder and kind; remember this one."""
        folder = str(Path(clap.path).resolve())
        path = self.root / "keys" / f"{_sha256_text(f'{kind}:{folder}')[:32]}.json"
        try:
            before = json.loads(path.read_text(encoding="utf-8")).get("key")
        except (OSError, ValueError, AttributeError):
            before = None  # first run with this model, or an unreadable note: nothing to compare
        key = json.loads(json.dumps(key, sort_keys=True, default=_jsonable))
        if before is not None and before != key:
            old, new = _flatten(before), _flatten(key)
            changes = [f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(old.keys() | new.keys())
                       if old.get(k) != new.get(k)]
            log.warning("embedding cache: the %s key of %s changed since it was last used (%s); embeddings "
                        "stored under the earlier key are not used, so missing ones are computed again",
                        kind, folder, "; ".join(changes[:6]) + (" ..." if len(changes) > 6 else ""))
        if before != key:
            atomic_write_json(path, {"what": f"{kind}:{folder}", "key": key})

    def audio(self, clap, segmenting: audio_rules.Segmenting | None = None) -> AudioStore:
        model = self.model_fingerprint(clap)
        key = audio_preprocessing(clap, segmenting, parts=self.processor_key(clap))
        self._note_key("audio", clap, {"model": model, **key})
        prep = key_digest(key)
        return AudioStore(self.root / model[:16] / prep[:16] / "audio", model=model, prep=prep,
                          dim=clap.embed_dim)

    def text(self, clap) -> TextStore:
        model = self.model_fingerprint(clap)
        key = text_preprocessing(clap, parts=self.processor_key(clap))
        self._note_key("text", clap, {"model": model, **key})
        prep = key_digest(key)
        return TextStore(self.root / model[:16] / "text" / prep[:16], model=model, prep=prep)

    def captions(self, clap) -> CaptionStore:
        """Per-text store (captions): same key as ``text`` (model, tokenizer)."""
        model = self.model_fingerprint(clap)
        prep = key_digest(text_preprocessing(clap, parts=self.processor_key(clap)))
        return CaptionStore(self.root / model[:16] / "text" / prep[:16] / "captions", model=model, prep=prep)

    def audio_digests(self, folder: str | Path, metas: list) -> list[str | None]:
        """``data.audioset.audio_digests(folder, metas)`` (each clip's sha256 of its encoded audio,
        for the leakage guard and the split's duplicate grouping), kept per parquet file under the
        file's own sha256 (``audio_digests/``): a warm run reads them instead of every clip's audio
        bytes (1.8 s per 1,000 ten-second clips here). A rewritten file has another sha256, so its
        digests are computed again; a missing row, or a row without a digest (a cell without
        bytes, an unreadable file: not remembered), is read again."""
        from data.audioset import audio_digests

        by_file: dict[str, list[int]] = {}
        for i, meta in enumerate(metas):
            by_file.setdefault(meta.file, []).append(i)
        out: list[str | None] = [None] * len(metas)
        for name, indices in by_file.items():
            file_sha = self.file_digest(Path(folder) / name)
            path = self.root / "audio_digests" / f"{file_sha[:32]}.json"
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
                known = saved["rows"] if saved.get("file_sha256") == file_sha else {}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                known = {}  # none yet, or a damaged note: read the audio again
            missing = [i for i in indices if not isinstance(known.get(str(metas[i].row)), str)]
            if missing:
                for i, digest in zip(missing, audio_digests(folder, [metas[i] for i in missing])):
                    if digest is not None:
                        known[str(metas[i].row)] = digest
                atomic_write_json(path, {"file_sha256": file_sha, "rows": known})
            for i in indices:
                out[i] = known.get(str(metas[i].row))
        return out


def clip_audio_digests(folder: str | Path, metas: list, cache: EmbeddingCache | None) -> list[str | None]:
    """Each clip's audio digest: through ``cache`` (``EmbeddingCache.audio_digests``), or read from
    the audio bytes without one (``--no-cache``)."""
    if cache is None:
        from data.audioset import audio_digests
        return audio_digests(folder, metas)
    return cache.audio_digests(folder, metas)
