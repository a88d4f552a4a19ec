"""EmbeddingStore: text embeddings per class behind an in-process LRU and Redis.

Lookup order for a vocabulary: memory LRU -> one Redis MGET for the memory misses -> `encode_fn` for what is
still missing -> write-back of the new embeddings (float16 bytes, one pipeline). Keys (docs/prompts.md,
"Redis keys"):
  lsmseg:v1:emb:{model_fingerprint}:{sha256(prompts)}   float16 bytes, P×D, row-major (prompt mode attributes)
  lsmseg:v1:emb:{model_fingerprint}:{mode}:{sha256(prompts)}   the same for the catseg and ensemble modes;
                                                        an ensemble entry is 1×D, however many sentences
  lsmseg:v1:desc:{prompt_version}:{sha256(name)}        JSON {"class", "prompts"} written by the LLM
Redis problems never reach the caller: they are counted, the answer comes from memory and `encode_fn`, and
what could not be written is kept (bounded) and written once Redis answers again.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from lsmseg.prompt_cache.errors import RedisUnavailable
from lsmseg.prompt_cache.keys import description_key, embedding_key
from lsmseg.prompt_cache.modes import DEFAULT_PROMPT_MODE, PROMPT_MODES, EncodeFn
from lsmseg.prompt_cache.names import normalise_name
from lsmseg.prompt_cache.redis_link import RedisLink

KEY_CACHE_ITEMS = 1 << 16
CountListener = Callable[[str, str, int], None]
K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A thread-safe least-recently-used map with a fixed number of entries."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[K]) -> list[V | None]:
        if self.capacity <= 0:
            return [None] * len(keys)
        with self._lock:
            found = [self._items.get(key) for key in keys]
            for key, value in zip(keys, found, strict=True):
                if value is not None:
                    self._items.move_to_end(key)
            return found

    def put_many(self, items: Iterable[tuple[K, V]]) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            for key, value in items:
                self._items[key] = value
                self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class TextLookup:
    """One vocabulary's rows found in the cache tiers, and the prompt lists none of them had."""

    keys: list[str]  # one per class, in the caller's order
    blocks: list[tuple[list[str], torch.Tensor]]  # (keys, their rows) per tier that had some
    missing_keys: list[str]  # distinct keys still to encode
    missing: list[list[str]]  # their prompt lists, in the same order
    rows: int  # embedding rows per class: P, or 1 in ensemble mode


class EmbeddingStore:
    """C lists of P prompts -> C×P×D float32 embeddings, computing only what no cache tier holds.

    `prompt_mode` (prompt_cache.modes) keeps each mode's entries apart; in "ensemble" mode a class's list may
    hold any number of sentences and its entry is one row (C×1×D), as `encode_fn` averages them.

    `redis_url` may also be a RedisLink shared with the VocabRegistry (one circuit breaker for both);
    None keeps everything in memory. Counts per (tier, result) are kept in `counts()` and, when given,
    reported to `on_count(tier, result, n)` (e.g. a Prometheus counter's labels(...).inc(n)):
      memory: hit | miss       redis: hit | miss | error (attempt failed) | skipped (breaker open)
      encode: computed         (all counted per distinct prompt list)
    """

    def __init__(
        self,
        redis_url: str | RedisLink | None,
        model_fingerprint: str,
        prompt_version: str,
        memory_items: int = 8192,
        *,
        ttl_s: int | None = None,
        device: torch.device | str = "cpu",
        on_count: CountListener | None = None,
        prompt_mode: str = DEFAULT_PROMPT_MODE,
    ) -> None:
        if prompt_mode not in PROMPT_MODES:
            raise ValueError(f"unknown prompt mode {prompt_mode!r}; known: {', '.join(PROMPT_MODES)}")
        self.prompt_mode = prompt_mode
        self.link = redis_url if isinstance(redis_url, RedisLink) else RedisLink(redis_url)
        self.model_fingerprint = model_fingerprint
        self.prompt_version = prompt_version
        self.ttl_s = ttl_s
        self.device = torch.device(device)
        self.on_count = on_count
        self._embeddings: LRU[str, torch.Tensor] = LRU(memory_items)
        self._descriptions: LRU[str, list[str]] = LRU(memory_items)
        # prompt tuple -> Redis key. Its own, larger bound: ~200 bytes an entry, and it spares a store
        # whose embeddings live only in Redis (small memory_items) the hashing on every lookup.
        self._keys: LRU[tuple[str, ...], str] = LRU(max(memory_items, KEY_CACHE_ITEMS))
        self._counts: Counter[tuple[str, str]] = Counter()
        # Writes Redis could not take (key -> (value, ttl)), retried when it answers again; at most
        # memory_items of them.
        self._unwritten: OrderedDict[str, tuple[bytes, int | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, prompts_per_class: Sequence[Sequence[str]], encode_fn: EncodeFn) -> torch.Tensor:
        """C×P×D float32 on `device`, values as `encode_fn` returned them (float16-rounded when from Redis).

        `encode_fn(prompt_lists)` receives only the prompt lists no tier had, and must return M×P×D
        (M×1×D in ensemble mode).
        """
        lookup = self.lookup(prompts_per_class)
        encoded = None
        if lookup.missing:
            with torch.no_grad():
                encoded = encode_fn(lookup.missing)
        return self.complete(lookup, encoded)

    def lookup(self, prompts_per_class: Sequence[Sequence[str]]) -> TextLookup:
        """What the memory LRU and Redis (one MGET for the memory misses) hold; `missing` is left to encode.
        A caller may encode the misses elsewhere (e.g. on a model thread, in chunks) and then `complete`."""
        per_class = self._rows_per_entry(prompts_per_class)
        keys = self._keys_for(prompts_per_class)
        prompts_by_key = dict(zip(keys, prompts_per_class, strict=True))  # also drops repeated classes
        distinct = list(prompts_by_key)
        cached = self._embeddings.get_many(distinct)
        blocks: list[tuple[list[str], torch.Tensor]] = []  # (keys, their rows), assembled at the end
        missing = [key for key, row in zip(distinct, cached, strict=True) if row is None]
        self._count("memory", "hit", len(distinct) - len(missing))
        self._count("memory", "miss", len(missing))
        if len(missing) < len(distinct):
            hits = [key for key, row in zip(distinct, cached, strict=True) if row is not None]
            blocks.append((hits, torch.stack([row for row in cached if row is not None])))
        if missing and self.link.enabled:
            fetched_keys, fetched = self._fetch(missing, per_class)
            if fetched_keys:
                blocks.append((fetched_keys, fetched))
                self._remember(fetched_keys, fetched)
                found = set(fetched_keys)
                missing = [key for key in missing if key not in found]
        return TextLookup(keys, blocks, missing, [list(prompts_by_key[key]) for key in missing], per_class)

    def complete(self, lookup: TextLookup, encoded: torch.Tensor | None) -> torch.Tensor:
        """C×P×D from a lookup and the embeddings of its `missing` prompt lists (M×P×D, in that order),
        which are remembered and written back to Redis."""
        blocks = list(lookup.blocks)
        new_entries: dict[str, tuple[bytes, int | None]] = {}
        if lookup.missing:
            encoded = self._accept(lookup, encoded)
            blocks.append((lookup.missing_keys, encoded))
            self._remember(lookup.missing_keys, encoded)
            if self.link.enabled:
                as_float16 = _convert(encoded.cpu(), torch.float16).numpy()
                for key, row in zip(lookup.missing_keys, as_float16, strict=True):
                    new_entries[key] = (row.tobytes(), self.ttl_s)
        self._write(new_entries)
        return self._assemble(lookup.keys, blocks)

    def get_descriptions(self, names: Sequence[str]) -> dict[str, list[str]]:
        """LLM-written sentences already cached for these classes, keyed by normalised name (one MGET)."""
        wanted = list(dict.fromkeys(normalise_name(name) for name in names))
        cached = self._descriptions.get_many(wanted)
        found = {name: prompts for name, prompts in zip(wanted, cached, strict=True) if prompts is not None}
        missing = [name for name in wanted if name not in found]
        if not missing or not self.link.enabled:
            return found
        keys = [description_key(self.prompt_version, name) for name in missing]
        try:
            values = self.link.run(lambda client: client.mget(keys))
        except RedisUnavailable:
            return found
        fetched = {name: _decode_description(value) for name, value in zip(missing, values, strict=True)}
        fetched = {name: prompts for name, prompts in fetched.items() if prompts is not None}
        self._descriptions.put_many(fetched.items())
        return found | fetched

    def put_descriptions(self, descriptions: Mapping[str, Sequence[str]]) -> None:
        """Cache LLM-written sentences for good (no TTL): the LLM is asked once per class, ever."""
        cleaned = {normalise_name(name): list(prompts) for name, prompts in descriptions.items()}
        self._descriptions.put_many(cleaned.items())
        entries = {}
        for name, prompts in cleaned.items():
            value = json.dumps({"class": name, "prompts": prompts}, ensure_ascii=False).encode()
            entries[description_key(self.prompt_version, name)] = (value, None)
        self._write(entries)

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

    def redis_state(self) -> str:
        """'up' | 'down' | 'disabled', for the service's /readyz."""
        return self.link.state()

    @property
    def outages(self) -> int:
        return self.link.outages

    def close(self) -> None:
        self.link.close()

    def _keys_for(self, prompts_per_class: Sequence[Sequence[str]]) -> list[str]:
        # Remembered per prompt tuple: hashing 847 classes would otherwise cost ~2 ms per lookup.
        groups = [tuple(prompts) for prompts in prompts_per_class]
        keys = self._keys.get_many(groups)
        new = []
        for index, key in enumerate(keys):
            if key is None:
                keys[index] = embedding_key(self.model_fingerprint, groups[index], self.prompt_mode)
                new.append((groups[index], keys[index]))
        self._keys.put_many(new)
        return keys

    def _fetch(self, keys: list[str], prompts_per_class: int) -> tuple[list[str], torch.Tensor | None]:
        """The keys Redis had and their rows (one MGET, one float16 decode for all of them)."""
        try:
            values = self.link.run(lambda client: client.mget(keys))
        except RedisUnavailable as exc:
            self._count("redis", "error" if exc.attempted else "skipped", len(keys))
            return [], None
        hits = [(key, value) for key, value in zip(keys, values, strict=True) if value]
        # All entries of one fingerprint have one size (P×D float16); anything else is a damaged value.
        sizes = Counter(len(value) for _, value in hits)
        size = sizes.most_common(1)[0][0] if sizes else 0
        if size % (2 * prompts_per_class) != 0:
            size = -1
        hits = [(key, value) for key, value in hits if len(value) == size]
        self._count("redis", "hit", len(hits))
        self._count("redis", "miss", len(keys) - len(hits))
        if not hits:
            return [], None
        half = torch.frombuffer(bytearray().join(value for _, value in hits), dtype=torch.float16)
        half = half.view(len(hits), prompts_per_class, -1)
        if self.device.type != "cpu":
            return [key for key, _ in hits], half.to(self.device).float()
        return [key for key, _ in hits], _convert(half, torch.float32)

    def _remember(self, keys: list[str], rows: torch.Tensor) -> None:
        if self._embeddings.capacity > 0:
            # Copies, not views: a view would keep its whole batch alive as long as any row is cached.
            self._embeddings.put_many(zip(keys, [row.clone() for row in rows], strict=True))

    @staticmethod
    def _assemble(keys: list[str], blocks: list[tuple[list[str], torch.Tensor]]) -> torch.Tensor:
        """One C×P×D tensor from the blocks each tier produced, in the caller's class order."""
        if len(blocks) == 1 and blocks[0][0] == keys:
            return blocks[0][1]  # the usual case: one tier had everything
        rows: dict[str, torch.Tensor] = {}
        for block_keys, block in blocks:
            rows.update(zip(block_keys, block.unbind(0), strict=True))
        return torch.stack([rows[key] for key in keys])

    def _rows_per_entry(self, prompts_per_class: Sequence[Sequence[str]]) -> int:
        if self.prompt_mode != "ensemble":
            return _prompts_per_class(prompts_per_class)
        if not prompts_per_class or any(len(prompts) == 0 for prompts in prompts_per_class):
            raise ValueError("every class needs at least one sentence")
        return 1

    def _accept(self, lookup: TextLookup, encoded: torch.Tensor | None) -> torch.Tensor:
        expected = (len(lookup.missing), lookup.rows)
        if encoded is None or encoded.dim() != 3 or tuple(encoded.shape[:2]) != expected:
            shape = None if encoded is None else tuple(encoded.shape)
            raise ValueError(f"encode_fn returned shape {shape}; expected {expected} × D")
        self._count("encode", "computed", len(lookup.missing))
        return encoded.detach().to(self.device, torch.float32)

    def _write(self, entries: dict[str, tuple[bytes, int | None]]) -> None:
        """Write `entries` plus anything an outage held back, in one pipeline; hold them if Redis is down."""
        if not self.link.enabled:
            return
        with self._lock:
            pending = {**self._unwritten, **entries}
        if not pending:
            return
        if self.link.may_try():

            def write(client) -> None:
                pipe = client.pipeline(transaction=False)
                for key, (value, ttl) in pending.items():
                    pipe.set(key, value, ex=ttl)
                pipe.execute()

            try:
                self.link.run(write)
            except RedisUnavailable:
                pass
            else:
                with self._lock:
                    for key in pending:
                        self._unwritten.pop(key, None)
                return
        with self._lock:
            self._unwritten.update(entries)
            while len(self._unwritten) > self._embeddings.capacity:
                self._unwritten.popitem(last=False)

    def _count(self, tier: str, result: str, n: int) -> None:
        if n == 0:
            return
        with self._lock:
            self._counts[(tier, result)] += n
        if self.on_count is not None:
            self.on_count(tier, result, n)


_SERIAL_ELEMENTS = 1 << 15  # below torch's parallel grain size, so each copy runs on the calling thread


def _convert(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A CPU dtype conversion done in slices that torch runs serially. Converting a vocabulary at once
    starts an OpenMP team, which on a busy 2-core machine took 4-12 ms instead of 0.2 ms."""
    converted = torch.empty(tensor.shape, dtype=dtype)
    source, target = tensor.reshape(-1), converted.view(-1)
    for start in range(0, source.numel(), _SERIAL_ELEMENTS):
        target[start : start + _SERIAL_ELEMENTS].copy_(source[start : start + _SERIAL_ELEMENTS])
    return converted


def _prompts_per_class(prompts_per_class: Sequence[Sequence[str]]) -> int:
    if not prompts_per_class:
        raise ValueError("no classes given")
    per_class = len(prompts_per_class[0])
    if per_class == 0 or any(len(prompts) != per_class for prompts in prompts_per_class):
        raise ValueError("every class needs the same, non-zero number of prompts")
    return per_class


def _decode_description(value: bytes | None) -> list[str] | None:
    if not value:
        return None
    try:
        prompts = json.loads(value)["prompts"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(prompts, list) or not all(isinstance(prompt, str) for prompt in prompts):
        return None
    return prompts
