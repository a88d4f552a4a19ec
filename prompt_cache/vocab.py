"""VocabRegistry: named, content-addressed class lists kept in Redis so every process knows them.

Keys (design §3): lsmseg:v1:vocab:{vocab_id} -> JSON {name, classes, prompt_version, created[, descriptions]},
lsmseg:v1:vocabname:{name} -> vocab_id. `vocab_id` hashes the normalised class list (and the user's
descriptions, when given, since they change the prompts), so registering the same list again is a no-op.
Redis is the source of truth; when it is down or disabled the registry works from what this process has
seen or registered, and writes what it registered meanwhile once Redis answers again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prompt_cache.errors import NameConflictError, NotFoundError, RedisUnavailable, ValidationError
from prompt_cache.keys import KEY_PREFIX, sha256_hex, vocab_key, vocab_name_key
from prompt_cache.names import MAX_CLASS_CHARS, MAX_CLASSES, validate_classes, validate_descriptions
from prompt_cache.prompt_bank import PROMPT_VERSION
from prompt_cache.redis_link import RedisLink

logger = logging.getLogger(__name__)

VOCAB_ID_CHARS = 16
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


class VocabRegistry:
    """register / get / delete / list vocabularies by content id or by unique name."""

    def __init__(
        self,
        redis_url: str | RedisLink | None,
        prompt_version: str = PROMPT_VERSION,
        *,
        max_classes: int = MAX_CLASSES,
        max_class_chars: int = MAX_CLASS_CHARS,
    ) -> None:
        self.link = redis_url if isinstance(redis_url, RedisLink) else RedisLink(redis_url)
        self.prompt_version = prompt_version
        self.max_classes = max_classes
        self.max_class_chars = max_class_chars
        self._lock = threading.RLock()
        self._local: dict[str, Vocabulary] = {}  # what this process has seen: the fallback during outages
        self._local_names: dict[str, str] = {}
        # Changes made while Redis was down, written when it answers again: id -> (vocabulary, deleted?)
        self._backlog: dict[str, tuple[Vocabulary, bool]] = {}

    def register(
        self,
        classes: Sequence[str],
        name: str | None = None,
        descriptions: Mapping[str, Sequence[str]] | None = None,
    ) -> Vocabulary:
        """The vocabulary for these classes, created if new; the same list always gets the same id."""
        normalised = validate_classes(classes, self.max_classes, self.max_class_chars)
        cleaned = validate_descriptions(descriptions, normalised) if descriptions else None
        if name is not None:
            name = validate_vocab_name(name)
        vocab_id = vocab_id_for(normalised, cleaned)
        with self._lock:
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
                created = time.time()
                vocab = Vocabulary(vocab_id, name, tuple(normalised), self.prompt_version, created, cleaned)
            if name is not None:
                self._claim_name(name, vocab_id)
            return self._store(vocab, new=existing is None)

    def get(self, id_or_name: str) -> Vocabulary:
        """A vocabulary by id or name; NotFoundError when neither is known."""
        ref = id_or_name.strip()
        with self._lock:
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
        with self._lock:
            vocab = self.get(id_or_name)

            def remove(client) -> None:
                pipe = client.pipeline(transaction=False)
                pipe.delete(vocab_key(vocab.vocab_id))
                if vocab.name is not None:
                    pipe.delete(vocab_name_key(vocab.name))
                pipe.execute()

            try:
                self.link.run(remove)
            except RedisUnavailable:
                if self.link.enabled:
                    self._backlog[vocab.vocab_id] = (vocab, True)
            self._forget_local(vocab)
            return vocab

    def list(self) -> list[Vocabulary]:
        """Every known vocabulary, oldest first."""
        with self._lock:
            self._flush_backlog()

            def read_all(client) -> list[tuple[str, bytes | None]]:
                keys = list(client.scan_iter(match=f"{KEY_PREFIX}vocab:*", count=1000))
                return list(zip(keys, client.mget(keys), strict=True)) if keys else []

            try:
                records = self.link.run(read_all)
            except RedisUnavailable:
                return sorted(self._local.values(), key=lambda vocab: vocab.created)
            found = {}
            for key, raw in records:
                if raw is not None:
                    vocab_id = key.decode().rsplit(":", 1)[-1]
                    found[vocab_id] = Vocabulary.from_json(vocab_id, raw)
            for vocab_id, (pending, deleted) in self._backlog.items():
                if deleted:
                    found.pop(vocab_id, None)
                else:
                    found[vocab_id] = pending
            return sorted(found.values(), key=lambda vocab: vocab.created)

    def _find(self, vocab_id: str) -> Vocabulary | None:
        try:
            raw = self.link.run(lambda client: client.get(vocab_key(vocab_id)))
        except RedisUnavailable:
            return self._local.get(vocab_id)
        if raw is None:
            return self._unsaved(vocab_id)
        return self._remember(Vocabulary.from_json(vocab_id, raw))

    def _read(self, ref: str) -> Vocabulary | None:
        """Look `ref` up as an id and as a name in one round trip (a second one to follow a name)."""
        record, named_id = self.link.run(lambda client: client.mget([vocab_key(ref), vocab_name_key(ref)]))
        if record is not None:
            return self._remember(Vocabulary.from_json(ref, record))
        if named_id is not None:
            return self._find(named_id.decode())
        return self._unsaved(self._local_names.get(ref, ref))

    def _unsaved(self, vocab_id: str) -> Vocabulary | None:
        """A vocabulary registered during an outage and not yet written to Redis."""
        vocab, deleted = self._backlog.get(vocab_id, (None, True))
        return None if deleted else vocab

    def _read_local(self, ref: str) -> Vocabulary | None:
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
            owner_id = self._local_names.get(name, vocab_id)
        if owner_id != vocab_id:
            raise NameConflictError(
                f"the name {name!r} already belongs to vocabulary {owner_id}, "
                f"which has a different class list"
            )

    def _store(self, vocab: Vocabulary, *, new: bool) -> Vocabulary:
        """Write `vocab`; a new one with NX, so of two processes registering it at once the first wins."""
        record = vocab.to_json()
        try:
            written = self.link.run(lambda client: client.set(vocab_key(vocab.vocab_id), record, nx=new))
        except RedisUnavailable:
            if self.link.enabled:
                self._backlog[vocab.vocab_id] = (vocab, False)
            return self._remember(vocab)
        if not written:
            return self._find(vocab.vocab_id) or self._remember(vocab)
        return self._remember(vocab)

    def _remember(self, vocab: Vocabulary) -> Vocabulary:
        self._local[vocab.vocab_id] = vocab
        if vocab.name is not None:
            self._local_names[vocab.name] = vocab.vocab_id
        return vocab

    def _forget_local(self, vocab: Vocabulary) -> None:
        self._local.pop(vocab.vocab_id, None)
        if vocab.name is not None and self._local_names.get(vocab.name) == vocab.vocab_id:
            del self._local_names[vocab.name]

    def _flush_backlog(self) -> None:
        """Write what was registered or deleted during an outage, once Redis answers again."""
        if not self._backlog or not self.link.may_try():
            return
        backlog = list(self._backlog.values())

        def write(client) -> list:
            pipe = client.pipeline(transaction=False)
            for vocab, deleted in backlog:
                if deleted:
                    pipe.delete(vocab_key(vocab.vocab_id))
                    if vocab.name is not None:
                        pipe.delete(vocab_name_key(vocab.name))
                else:
                    pipe.set(vocab_key(vocab.vocab_id), vocab.to_json())
                    if vocab.name is not None:
                        pipe.set(vocab_name_key(vocab.name), vocab.vocab_id, nx=True)
            return pipe.execute()

        try:
            self.link.run(write)
        except RedisUnavailable:
            return
        self._backlog.clear()
        logger.info("wrote %d vocabulary changes made while Redis was down", len(backlog))
