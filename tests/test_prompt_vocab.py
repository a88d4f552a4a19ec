"""VocabRegistry on a real Redis: content ids, names, validation messages, other processes, outages."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time

import pytest
import redis

from lsmseg.prompt_cache import (
    PROMPT_VERSION,
    NameConflictError,
    NotFoundError,
    RedisLink,
    ValidationError,
    VocabRegistry,
    vocab_key,
    vocab_name_key,
)


def test_registering_the_same_list_twice_is_idempotent(redis_url: str) -> None:
    registry = VocabRegistry(redis_url)
    first = registry.register(["Cat", "traffic  light", "sky"])
    assert first.classes == ("cat", "traffic light", "sky")
    assert first.prompt_version == PROMPT_VERSION
    assert len(first.vocab_id) == 16
    again = registry.register([" cat", "Traffic Light", "SKY "])
    assert again == first
    assert registry.register(["sky", "cat", "traffic light"]).vocab_id != first.vocab_id  # order is meaning

    stored = json.loads(redis.Redis.from_url(redis_url).get(vocab_key(first.vocab_id)))
    assert stored == {
        "name": None,
        "classes": ["cat", "traffic light", "sky"],
        "prompt_version": PROMPT_VERSION,
        "created": first.created,
    }


def test_names_are_unique_and_resolve_to_ids(redis_url: str) -> None:
    registry = VocabRegistry(redis_url)
    kitchen = registry.register(["cup", "plate"], name="kitchen")
    assert redis.Redis.from_url(redis_url).get(vocab_name_key("kitchen")) == kitchen.vocab_id.encode()
    assert registry.get("kitchen") == registry.get(kitchen.vocab_id) == kitchen
    assert registry.register(["cup", "plate"], name="kitchen") == kitchen
    assert registry.register(["cup", "plate"]) == kitchen

    taken = f"the name 'kitchen' already belongs to vocabulary {kitchen.vocab_id}"
    with pytest.raises(NameConflictError, match=taken):
        registry.register(["fork"], name="kitchen")
    with pytest.raises(NameConflictError, match="already registered as 'kitchen'"):
        registry.register(["cup", "plate"], name="dishes")


def test_a_nameless_vocabulary_can_be_named_later(redis_url: str) -> None:
    registry = VocabRegistry(redis_url)
    plain = registry.register(["road", "car"])
    named = registry.register(["road", "car"], name="street")
    assert named.vocab_id == plain.vocab_id and named.created == plain.created
    assert VocabRegistry(redis_url).get("street").name == "street"


def test_user_descriptions_are_kept_and_part_of_the_identity(redis_url: str) -> None:
    registry = VocabRegistry(redis_url)
    plain = registry.register(["cat", "dog"])
    described = registry.register(["cat", "dog"], descriptions={"Cat": ["a  fluffy cat."]})
    assert described.vocab_id != plain.vocab_id
    assert VocabRegistry(redis_url).get(described.vocab_id).descriptions == {"cat": ["a fluffy cat."]}


@pytest.mark.parametrize(
    ("classes", "name", "message"),
    [
        ([], None, "the class list is empty"),
        (["a", "b", "c", "d"], None, "4 classes given; at most 3 are allowed"),
        (["cat", "   "], None, "class 1 is empty"),
        (["cat", "x" * 201], None, "class 1 has 201 characters; at most 200 are allowed"),
        (["Cat", "dog", "cat "], None, "duplicate classes after normalisation .*'cat'"),
        ("cat", None, "classes must be a list of class names"),
        (["cat"], "has space", "invalid vocabulary name 'has space'"),
        (["cat"], "0123456789abcdef", "looks like a vocabulary id"),
    ],
)
def test_validation_errors_say_what_is_wrong(
    redis_url: str, classes: list[str], name: str | None, message: str
) -> None:
    registry = VocabRegistry(redis_url, max_classes=3)
    with pytest.raises(ValidationError, match=message):
        registry.register(classes, name=name)
    assert registry.list() == []


def test_unknown_and_deleted_vocabularies_are_not_found(redis_url: str) -> None:
    registry = VocabRegistry(redis_url)
    with pytest.raises(NotFoundError, match="unknown vocabulary 'nope'"):
        registry.get("nope")
    vocab = registry.register(["cup"], name="mugs")
    assert registry.delete("mugs") == vocab
    for ref in ("mugs", vocab.vocab_id):
        with pytest.raises(NotFoundError):
            registry.get(ref)
    with pytest.raises(NotFoundError):
        registry.delete(vocab.vocab_id)
    assert registry.register(["tea"], name="mugs").classes == ("tea",)  # the name is free again


def test_list_returns_every_vocabulary_oldest_first(redis_url: str) -> None:
    registry = VocabRegistry(redis_url)
    first = registry.register(["a"], name="one")
    second = registry.register(["b"])
    assert [vocab.vocab_id for vocab in VocabRegistry(redis_url).list()] == [first.vocab_id, second.vocab_id]


def test_a_new_process_sees_what_was_registered(redis_url: str) -> None:
    vocab = VocabRegistry(redis_url).register(["person", "bicycle, bike"], name="street-scene")
    reader = (
        "import json, sys\n"
        "from lsmseg.prompt_cache.vocab import VocabRegistry\n"
        "v = VocabRegistry(sys.argv[1]).get('street-scene')\n"
        "print(json.dumps([v.vocab_id, v.name, list(v.classes), v.created]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", reader, redis_url], capture_output=True, text=True, timeout=60, check=True
    )
    expected = [vocab.vocab_id, "street-scene", ["person", "bicycle, bike"], vocab.created]
    assert json.loads(done.stdout) == expected


def test_memory_only_registry() -> None:
    registry = VocabRegistry(None)
    vocab = registry.register(["cat"], name="pets")
    assert registry.get("pets") == vocab
    assert registry.list() == [vocab]
    with pytest.raises(NameConflictError):
        registry.register(["dog"], name="pets")
    registry.delete(vocab.vocab_id)
    assert registry.list() == []


def test_registrations_during_an_outage_reach_redis_afterwards(private_redis) -> None:
    link = RedisLink(private_redis.url, timeout_s=0.2, cooldown_s=0.3)
    registry = VocabRegistry(link)
    known = registry.register(["sky"], name="up")
    private_redis.stop()
    assert registry.get("up") == known  # from what this process has seen
    during = registry.register(["sea", "sand"], name="beach")
    assert registry.get("beach") == during
    assert link.state() == "down"

    private_redis.start()  # an empty server
    time.sleep(0.35)
    assert registry.get("beach") == during  # this call writes the backlog
    other = VocabRegistry(private_redis.url)
    assert other.get("beach") == during
    assert other.get(during.vocab_id) == during


def test_of_two_processes_registering_at_once_the_first_record_wins(redis_url: str) -> None:
    first, second = VocabRegistry(redis_url), VocabRegistry(redis_url)
    # Both looked the id up before either wrote it; the second write must not replace the first.
    original = first.register(["rain", "snow"])
    second_view = second._store(dataclasses.replace(original, created=original.created + 5), new=True)
    assert second_view == original
    assert VocabRegistry(redis_url).get(original.vocab_id).created == original.created


def test_the_memory_tier_is_bounded_and_redis_still_has_everything(redis_url: str) -> None:
    registry = VocabRegistry(redis_url, local_items=3)
    registered = [registry.register([f"bounded {index}"], name=f"b{index}") for index in range(10)]
    assert len(registry._local) == 3 and len(registry._local_names) == 3  # the three most recent
    assert [registry.get(f"b{index}") for index in range(10)] == registered


def test_pages_come_from_the_index_oldest_first(redis_url: str) -> None:
    registry = VocabRegistry(redis_url)
    registered = [registry.register([f"paged {index}"]) for index in range(7)]
    first, total = registry.page(0, 3)
    second, _ = registry.page(3, 3)
    last, _ = registry.page(6, 3)
    assert total == 7 and first + second + last == registered == registry.list()
    registry.delete(registered[0].vocab_id)
    assert registry.page(0, 2) == (registered[1:3], 6)


def test_a_listing_waiting_on_redis_holds_no_lookup_up(redis_url: str) -> None:
    registry = VocabRegistry(redis_url)
    kept = [registry.register([f"listed {index}"], name=f"listed{index}") for index in range(3)]
    inside, release = threading.Event(), threading.Event()
    run = registry.link.run

    def slow_page_read(call):
        if getattr(call, "__name__", "") == "read_page":  # the listing's round trip: stall it
            inside.set()
            assert release.wait(10)
        return run(call)

    registry.link.run = slow_page_read  # type: ignore[method-assign]
    listed: list = []
    lister = threading.Thread(target=lambda: listed.append(registry.page(0, 10)))
    lister.start()
    try:
        assert inside.wait(5)
        found = []
        lookup = threading.Thread(target=lambda: found.extend(registry.get(f"listed{i}") for i in range(3)))
        lookup.start()
        lookup.join(5)
        assert not lookup.is_alive() and found == kept  # answered while the listing still waits
        assert lister.is_alive() and not listed
    finally:
        release.set()
        lister.join(10)
    assert listed == [(kept, 3)]


def test_an_emptied_redis_gets_the_held_vocabularies_back(private_redis) -> None:
    registry = VocabRegistry(private_redis.url)
    kept = registry.register(["sun", "moon"], name="sky")
    private_redis.stop()
    private_redis.start()  # no persistence: it comes back empty
    assert registry.get("sky") == kept  # this lookup found no epoch token, so it wrote back what it held
    fresh = VocabRegistry(private_redis.url)
    assert fresh.get("sky") == kept and fresh.list() == [kept]


def test_records_from_before_the_index_are_indexed_once(redis_url: str) -> None:
    vocab = VocabRegistry(redis_url).register(["old", "record"])
    client = redis.Redis.from_url(redis_url)
    client.delete("lsmseg:v1:vocabindex", "lsmseg:v1:vocabepoch")  # as a Redis written by an older version
    client.close()
    assert VocabRegistry(redis_url).list() == [vocab]


def test_references_that_cannot_be_ids_or_names_are_unknown_without_redis(redis_url: str) -> None:
    registry = VocabRegistry(redis_url)
    for ref in ("\ud800", "a b", "x" * 65, "", "é"):
        with pytest.raises(NotFoundError):
            registry.get(ref)
