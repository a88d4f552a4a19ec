"""VocabRegistry: named, content-addressed class lists kept in Redis so every process knows them.

Keys (docs/prompts.md, "Redis keys"): lsmseg:v1:vocab:{vocab_id} -> JSON {name, classes, prompt_version,
created[, descriptions]}, lsmseg:v1:vocabname:{name} -> vocab_id. `vocab_id` hashes the normalised class
list (and the user's descriptions, when given, since they change the prompts), so registering the same list
again is a no-op.
lsmseg:v1:vocabindex (sorted set of ids by creation time) lets GET /vocab read one page, not every record.
Redis is the source of truth; when it is down or disabled the registry works from what this process has
seen or registered (the most recently used `local_items` of them), and writes what it registered meanwhile
once Redis answers again. When Redis comes back empty (a restart without persistence: the epoch key it keeps
is gone or new), the registry writes back the vocabularies it holds.
Network round trips run outside the registry's lock, so one slow listing never holds up lookups.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lsmseg.prompt_cache.errors import NameConflictError, NotFoundError, RedisUnavailable, ValidationError
from lsmseg.prompt_cache.keys import (
    KEY_PREFIX,
    registry_epoch_key,
    sha256_hex,
    vocab_index_key,
    vocab_key,
    vocab_name_key,
)
from lsmseg.prompt_cache.names import MAX_CLASS_CHARS, MAX_CLASSES, ClassList, validate_class_list
from lsmseg.prompt_cache.prompt_bank import PROMPT_VERSION
from lsmseg.prompt_cache.redis_link import RedisLink

logger = logging.getLogger(__name__)

VOCAB_ID_CHARS = 16
LOCAL_ITEMS = 1024  # vocabularies kept in memory: at most ~200 MB even with 1024 classes of 200 characters
_ID_PATTERN = re.compile(rf"[0-9a-f]{{{VOCAB_ID_CHARS}}}")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Vocabulary:
    vocab_id: str
    name: str | None
    classes: tuple[str, ...]  # normalised, in the caller's order (label value i = classes[i])
    prompt_version: str
    created: float  # Unix time of the first registration
    descriptions: dict[str, list[str]] | None = None  # user-written prompts, keyed by class

    def to_json(self) -> str:
        record = {
            "name": self.name,
            "classes": list(self.classes),
            "prompt_version": self.prompt_version,
            "created": self.created,
        }
        if self.descriptions:
            record["descriptions"] = self.descriptions
        return json.dumps(record, ensure_ascii=False)

    @classmethod
    def from_json(cls, vocab_id: str, raw: str | bytes) -> Vocabulary:
        record = json.loads(raw)
        return cls(
            vocab_id=vocab_id,
            name=record.get("name"),
            classes=tuple(record["classes"]),
            prompt_version=record["prompt_version"],
            created=float(record["created"]),
            descriptions=record.get("descriptions"),
        )


def vocab_id_for(classes: Sequence[str], descriptions: Mapping[str, Sequence[str]] | None = None) -> str:
    """Content hash of an already-normalised class list (plus user descriptions, when there are any)."""
    content: dict[str, object] = {"classes": list(classes)}
    if descriptions:
        content["descriptions"] = {name: list(descriptions[name]) for name in sorted(descriptions)}
    return sha256_hex(json.dumps(content, ensure_ascii=False, separators=(",", ":")))[:VOCAB_ID_CHARS]


def validate_vocab_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise ValidationError(
            f"invalid vocabulary name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit"
        )
    if _ID_PATTERN.fullmatch(name):
        raise ValidationError(f"invalid vocabulary name {name!r}: it looks like a vocabulary id")
    return name


def could_be_reference(ref: str) -> bool:
    """True for what an id or a name can look like; anything else is unknown without asking Redis."""
    return bool(_ID_PATTERN.fullmatch(ref) or _NAME_PATTERN.fullmatch(ref))


class VocabRegistry:
    """register / get / delete / list vocabularies by content id or by unique name."""

    def __init__(
        self,
        redis_url: str | RedisLink | None,
        prompt_version: str = PROMPT_VERSION,
        *,
        max_classes: int = MAX_CLASSES,
        max_class_chars: int = MAX_CLASS_CHARS,
        local_items: int = LOCAL_ITEMS,
    ) -> None:
        self.link = redis_url if isinstance(redis_url, RedisLink) else RedisLink(redis_url)
        self.prompt_version = prompt_version
        self.max_classes = max_classes
        self.max_class_chars = max_class_chars
        self.local_items = local_items
        self._lock = threading.Lock()  # guards the dicts below; never held across a network round trip
        self._changes = threading.Lock()  # one registration or deletion at a time in this process
        # What this process has seen (the fallback during outages), least recently used first.
        self._local: OrderedDict[str, Vocabulary] = OrderedDict()
        self._local_names: dict[str, str] = {}
        # Changes made while Redis was down, written when it answers again: id -> (vocabulary, deleted?)
        self._backlog: OrderedDict[str, tuple[Vocabulary, bool]] = OrderedDict()
        self._epoch: bytes | None = None  # Redis's epoch token when this process last looked

    def register(
        self,
        classes: Sequence[str] | ClassList,
        name: str | None = None,
        descriptions: Mapping[str, Sequence[str]] | None = None,
    ) -> Vocabulary:
        """The vocabulary for these classes, created if new; the same list always gets the same id.
        A ClassList is taken as validated (its descriptions are used; `descriptions` is ignored)."""
        checked = (
            classes
            if isinstance(classes, ClassList)
            else validate_class_list(classes, descriptions, self.max_classes, self.max_class_chars)
        )
        if name is not None:
            name = validate_vocab_name(name)
        vocab_id = vocab_id_for(checked.names, checked.descriptions)
        with self._changes:
            self._flush_backlog()
            existing = self._find(vocab_id)
            if existing is not None and (name is None or existing.name == name):
                return existing
            if existing is not None and existing.name is not None:
                raise NameConflictError(
                    f"these classes are already registered as {existing.name!r} (id {vocab_id}); "
                    f"a vocabulary has one name"
                )
            if existing is not None:
                vocab = dataclasses.replace(existing, name=name)
            else:
                vocab = Vocabulary(
                    vocab_id, name, checked.names, self.prompt_version, time.time(), checked.descriptions
                )
            if name is not None:
                self._claim_name(name, vocab_id)
            return self._store(vocab, new=existing is None)

    def get(self, id_or_name: str) -> Vocabulary:
        """A vocabulary by id or name; NotFoundError when neither is known."""
        ref = id_or_name.strip()
        if not could_be_reference(ref):
            raise NotFoundError(f"unknown vocabulary {id_or_name!r}")
        self._flush_backlog()
        try:
            vocab = self._read(ref)
        except RedisUnavailable:
            vocab = self._read_local(ref)
        if vocab is None:
            raise NotFoundError(f"unknown vocabulary {id_or_name!r}")
        return vocab

    def delete(self, id_or_name: str) -> Vocabulary:
        """Forget a vocabulary (its cached embeddings stay: other vocabularies may share them)."""
        with self._changes:
            vocab = self.get(id_or_name)

            def remove(client) -> None:
                pipe = client.pipeline(transaction=False)
                pipe.delete(vocab_key(vocab.vocab_id))
                pipe.zrem(vocab_index_key(), vocab.vocab_id)
                if vocab.name is not None:
                    pipe.delete(vocab_name_key(vocab.name))
                pipe.execute()

            try:
                self.link.run(remove)
            except RedisUnavailable:
                if self.link.enabled:
                    self._hold(vocab, deleted=True)
            self._forget_local(vocab)
            return vocab

    def list(self, offset: int = 0, limit: int | None = None) -> list[Vocabulary]:
        """Known vocabularies, oldest first: `limit` of them from position `offset` (all by default)."""
        return self.page(offset, limit)[0]

    def page(self, offset: int = 0, limit: int | None = None) -> tuple[list[Vocabulary], int]:
        """(vocabularies from `offset`, at most `limit`, oldest first; how many there are in all).
        Reads one page of the index and its records: two round trips whatever the total."""
        self._flush_backlog()
        stop = -1 if limit is None else offset + limit - 1

        def read_page(client) -> tuple[bytes | None, int, list[tuple[str, bytes | None]]]:
            pipe = client.pipeline(transaction=False)
            pipe.get(registry_epoch_key())
            pipe.zcard(vocab_index_key())
            pipe.zrange(vocab_index_key(), offset, stop)
            epoch, total, ids = pipe.execute()
            ids = [vocab_id.decode() for vocab_id in ids]
            records = client.mget([vocab_key(vocab_id) for vocab_id in ids]) if ids else []
            return epoch, total, list(zip(ids, records, strict=True))

        if limit == 0:
            return [], self._count_or_local()
        try:
            epoch, total, records = self.link.run(read_page)
            if self._sync_epoch(epoch):  # the index was just rebuilt: read the page again
                epoch, total, records = self.link.run(read_page)
        except RedisUnavailable:
            return self._local_page(offset, limit)
        found = [Vocabulary.from_json(vocab_id, raw) for vocab_id, raw in records if raw is not None]
        return found, total

    def _count_or_local(self) -> int:
        try:
            return int(self.link.run(lambda client: client.zcard(vocab_index_key())))
        except RedisUnavailable:
            return self._local_page(0, 0)[1]

    def _local_page(self, offset: int, limit: int | None) -> tuple[list[Vocabulary], int]:
        with self._lock:
            known = dict(self._local)
            for vocab_id, (pending, deleted) in self._backlog.items():
                if deleted:
                    known.pop(vocab_id, None)
                else:
                    known[vocab_id] = pending
        ordered = sorted(known.values(), key=lambda vocab: vocab.created)
        end = None if limit is None else offset + limit
        return ordered[offset:end], len(ordered)

    def _find(self, vocab_id: str) -> Vocabulary | None:
        try:
            keys = [vocab_key(vocab_id), registry_epoch_key()]
            raw, epoch = self.link.run(lambda client: client.mget(keys))
            if self._sync_epoch(epoch):
                raw = self.link.run(lambda client: client.get(vocab_key(vocab_id)))
        except RedisUnavailable:
            with self._lock:
                return self._local.get(vocab_id)
        if raw is None:
            return self._unsaved(vocab_id)
        return self._remember(Vocabulary.from_json(vocab_id, raw))

    def _read(self, ref: str) -> Vocabulary | None:
        """Look `ref` up as an id and as a name in one round trip (a second one to follow a name)."""
        keys = [vocab_key(ref), vocab_name_key(ref), registry_epoch_key()]
        record, named_id, epoch = self.link.run(lambda client: client.mget(keys))
        if self._sync_epoch(epoch):
            record, named_id, _ = self.link.run(lambda client: client.mget(keys))
        if record is not None:
            return self._remember(Vocabulary.from_json(ref, record))
        if named_id is not None:
            return self._find(named_id.decode())
        with self._lock:
            vocab_id = self._local_names.get(ref, ref)
        return self._unsaved(vocab_id)

    def _unsaved(self, vocab_id: str) -> Vocabulary | None:
        """A vocabulary registered during an outage and not yet written to Redis."""
        with self._lock:
            vocab, deleted = self._backlog.get(vocab_id, (None, True))
        return None if deleted else vocab

    def _read_local(self, ref: str) -> Vocabulary | None:
        with self._lock:
            return self._local.get(ref) or self._local.get(self._local_names.get(ref, ""))

    def _claim_name(self, name: str, vocab_id: str) -> None:
        def claim(client) -> bytes | None:
            pipe = client.pipeline(transaction=False)
            pipe.set(vocab_name_key(name), vocab_id, nx=True)  # NX: concurrent registrations cannot steal it
            pipe.get(vocab_name_key(name))
            return pipe.execute()[1]

        try:
            owner = self.link.run(claim)
            owner_id = owner.decode() if owner is not None else vocab_id
        except RedisUnavailable:
            with self._lock:
                owner_id = self._local_names.get(name, vocab_id)
        if owner_id != vocab_id:
            raise NameConflictError(
                f"the name {name!r} already belongs to vocabulary {owner_id}, "
                f"which has a different class list"
            )

    def _store(self, vocab: Vocabulary, *, new: bool) -> Vocabulary:
        """Write `vocab`; a new one with NX, so of two processes registering it at once the first wins."""
        record = vocab.to_json()

        def write(client) -> bool:
            pipe = client.pipeline(transaction=False)
            pipe.set(vocab_key(vocab.vocab_id), record, nx=new)
            pipe.zadd(vocab_index_key(), {vocab.vocab_id: vocab.created}, nx=True)
            return bool(pipe.execute()[0])

        try:
            written = self.link.run(write)
        except RedisUnavailable:
            if self.link.enabled:
                self._hold(vocab, deleted=False)
            return self._remember(vocab)
        if not written:
            return self._find(vocab.vocab_id) or self._remember(vocab)
        return self._remember(vocab)

    def _remember(self, vocab: Vocabulary) -> Vocabulary:
        with self._lock:
            self._local[vocab.vocab_id] = vocab
            self._local.move_to_end(vocab.vocab_id)
            if vocab.name is not None:
                self._local_names[vocab.name] = vocab.vocab_id
            while len(self._local) > self.local_items:
                self._drop_local(self._local.popitem(last=False)[1])
        return vocab

    def _forget_local(self, vocab: Vocabulary) -> None:
        with self._lock:
            self._local.pop(vocab.vocab_id, None)
            self._drop_local(vocab)

    def _drop_local(self, vocab: Vocabulary) -> None:
        if vocab.name is not None and self._local_names.get(vocab.name) == vocab.vocab_id:
            del self._local_names[vocab.name]

    def _hold(self, vocab: Vocabulary, *, deleted: bool) -> None:
        """Keep a change for Redis (bounded like the local copy: an outage must not grow memory forever)."""
        with self._lock:
            self._backlog[vocab.vocab_id] = (vocab, deleted)
            self._backlog.move_to_end(vocab.vocab_id)
            while len(self._backlog) > self.local_items:
                lost, _ = self._backlog.popitem(last=False)[1]
                logger.warning("Redis is down too long: vocabulary %s will not be written", lost.vocab_id)

    def _flush_backlog(self) -> None:
        """Write what was registered or deleted during an outage, once Redis answers again."""
        if not self._backlog or not self.link.may_try():
            return
        with self._lock:
            backlog = list(self._backlog.values())

        def write(client) -> list:
            pipe = client.pipeline(transaction=False)
            for vocab, deleted in backlog:
                if deleted:
                    pipe.delete(vocab_key(vocab.vocab_id))
                    pipe.zrem(vocab_index_key(), vocab.vocab_id)
                    if vocab.name is not None:
                        pipe.delete(vocab_name_key(vocab.name))
                else:
                    _queue_write(pipe, vocab)
            return pipe.execute()

        try:
            self.link.run(write)
        except RedisUnavailable:
            return
        with self._lock:
            for vocab, deleted in backlog:
                if self._backlog.get(vocab.vocab_id) == (vocab, deleted):
                    del self._backlog[vocab.vocab_id]
        logger.info("wrote %d vocabulary changes made while Redis was down", len(backlog))

    def _sync_epoch(self, epoch: bytes | None) -> bool:
        """Notice a Redis that lost its data (no epoch token, or another one than last time): rebuild the
        index from the records there and write back what this process holds. True when it did so."""
        if epoch is not None and epoch == self._epoch:
            return False

        def start_epoch(client) -> bytes:
            pipe = client.pipeline(transaction=False)
            pipe.set(registry_epoch_key(), secrets.token_hex(8), nx=True)
            pipe.get(registry_epoch_key())
            return pipe.execute()[1]

        if epoch is None:
            epoch = self.link.run(start_epoch)
            self.link.run(_index_records)  # records of an older version, or none at all
        with self._lock:
            held = list(self._local.values())
        if held:
            logger.warning("Redis lost its data: writing back the %d vocabularies held here", len(held))

            def write_back(client) -> None:
                pipe = client.pipeline(transaction=False)
                for vocab in held:
                    _queue_write(pipe, vocab)
                pipe.execute()

            self.link.run(write_back)
        self._epoch = epoch
        return True


def _queue_write(pipe, vocab: Vocabulary) -> None:
    """Queue `vocab`'s record, index entry and name on a pipeline, none replacing what is there."""
    pipe.set(vocab_key(vocab.vocab_id), vocab.to_json(), nx=True)
    pipe.zadd(vocab_index_key(), {vocab.vocab_id: vocab.created}, nx=True)
    if vocab.name is not None:
        pipe.set(vocab_name_key(vocab.name), vocab.vocab_id, nx=True)


def _index_records(client) -> None:
    """Add every vocabulary record in Redis to the index (one SCAN; only when the epoch starts)."""
    keys = list(client.scan_iter(match=f"{KEY_PREFIX}vocab:*", count=1000))
    if not keys:
        return
    scores = {}
    for key, raw in zip(keys, client.mget(keys), strict=True):
        if raw is not None:
            vocab_id = key.decode().rsplit(":", 1)[-1]
            scores[vocab_id] = float(json.loads(raw).get("created", 0.0))
    if scores:
        client.zadd(vocab_index_key(), scores, nx=True)
