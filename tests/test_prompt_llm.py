"""LLMClient against a local chat-completions server; PromptBuilder's LLM path, fallback and Redis caching."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from prompt_fake_llm import FakeLLM, Reply, chat_body, good_content

from lsmseg.prompt_cache import (
    PROMPT_VERSION,
    Bank,
    EmbeddingStore,
    LLMAnswerError,
    LLMClient,
    LLMNotConfiguredError,
    LLMRejectedError,
    LLMUnavailableError,
    PromptBuilder,
    description_key,
    token_count,
)


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    server = FakeLLM()
    yield server
    server.close()


def client(fake_llm: FakeLLM, **options: float) -> LLMClient:
    settings = {"timeout_s": 2.0, "max_retries": 2, "backoff_s": 0.01, **options}
    return LLMClient(fake_llm.url, "test-model", "secret-key", **settings)


def test_good_answer_gives_one_sentence_per_attribute_in_order(fake_llm: FakeLLM) -> None:
    sentences = client(fake_llm).describe("Car, auto, automobile")
    assert sentences == [
        "A car is a table-sized, boxy object with a smooth grey or white surface.",
        "A car is about as big as a kitchen table.",
        "A car has a boxy outline with rounded corners.",
        "A car has a smooth, slightly glossy surface.",
        "A car is usually grey, white or dark blue.",
    ]
    request = fake_llm.requests[0]
    assert request["model"] == "test-model"
    prompt = request["messages"][-1]["content"]
    assert "Describe a car (also called: auto, automobile) with respect to a given attribute" in prompt
    assert "should not exceed 77 tokens, consistent with the CLIP tokenizer limit" in prompt
    assert "size, shape, texture, colour" in prompt
    assert fake_llm.headers[0]["Authorization"] == "Bearer secret-key"


def test_fenced_json_and_american_spelling_are_accepted(fake_llm: FakeLLM) -> None:
    answer = json.loads(good_content("cat"))
    answer["color"] = answer.pop("colour")
    fake_llm.script.append(Reply(body=chat_body("Sure!\n```json\n" + json.dumps(answer) + "\n```")))
    assert client(fake_llm).describe("cat")[4] == "A cat is usually grey, white or dark blue."


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("I would rather talk about dogs.", "not a JSON object"),
        (json.dumps({"size": "big", "shape": "round", "texture": "soft", "colour": "red"}), "'combined'"),
        (json.dumps({**json.loads(good_content("cat")), "shape": ["round", "flat"]}), "'shape'"),
        (json.dumps({**json.loads(good_content("cat")), "texture": "   "}), "'texture'"),
        (json.dumps({**json.loads(good_content("cat")), "size": "big " * 80}), "82 tokens; CLIP allows 77"),
    ],
)
def test_unusable_answers_raise_answer_errors(fake_llm: FakeLLM, content: str, message: str) -> None:
    fake_llm.script.append(Reply(body=chat_body(content)))
    with pytest.raises(LLMAnswerError, match=message):
        client(fake_llm).describe("cat")
    assert len(fake_llm.requests) == 1  # a bad answer is not retried


def test_a_body_that_is_not_chat_completions_is_an_answer_error(fake_llm: FakeLLM) -> None:
    fake_llm.script.append(Reply(body="<html>gateway</html>"))
    with pytest.raises(LLMAnswerError, match="did not send a chat-completions answer"):
        client(fake_llm).describe("cat")


def test_timeouts_are_retried_a_bounded_number_of_times(fake_llm: FakeLLM) -> None:
    fake_llm.script.extend([Reply(delay_s=1.5), Reply(delay_s=1.5)])
    started = time.perf_counter()
    with pytest.raises(LLMUnavailableError, match="failed 2 times; last: timed out"):
        client(fake_llm, timeout_s=0.2, max_retries=1).describe("cat")
    assert time.perf_counter() - started < 1.2
    assert len(fake_llm.requests) == 2


def test_429_waits_for_retry_after_then_succeeds(fake_llm: FakeLLM) -> None:
    fake_llm.script.append(Reply(status=429, body='{"error": "slow down"}', headers={"Retry-After": "1"}))
    started = time.perf_counter()
    # backoff_s is huge: finishing in about one second proves Retry-After, not the backoff, set the wait.
    sentences = client(fake_llm, backoff_s=30.0).describe("cat")
    elapsed = time.perf_counter() - started
    assert 0.95 <= elapsed < 3.0
    assert len(sentences) == 5
    assert len(fake_llm.requests) == 2


def test_server_errors_end_in_a_typed_error_after_bounded_retries(fake_llm: FakeLLM) -> None:
    fake_llm.script.extend([Reply(status=500, body="boom")] * 5)
    with pytest.raises(LLMUnavailableError, match="failed 3 times; last: HTTP 500"):
        client(fake_llm, max_retries=2).describe("cat")
    assert len(fake_llm.requests) == 3


def test_client_errors_are_not_retried(fake_llm: FakeLLM) -> None:
    fake_llm.script.append(Reply(status=401, body='{"error": "bad key"}'))
    with pytest.raises(LLMRejectedError, match="HTTP 401"):
        client(fake_llm).describe("cat")
    assert len(fake_llm.requests) == 1


def test_configuration_from_the_environment() -> None:
    assert LLMClient.from_env({}) is None
    with pytest.raises(LLMNotConfiguredError, match="LSMSEG_LLM_MODEL is not"):
        LLMClient.from_env({"LSMSEG_LLM_URL": "http://llm:8000/v1"})
    llm = LLMClient.from_env({"LSMSEG_LLM_URL": "http://llm:8000/v1/", "LSMSEG_LLM_MODEL": "m"})
    assert llm is not None
    assert llm.endpoint == "http://llm:8000/v1/chat/completions"
    assert llm.model == "m"


def test_builder_falls_back_to_templates_and_stops_asking_a_failing_llm(fake_llm: FakeLLM) -> None:
    fake_llm.script.extend([Reply(status=503, body="down")] * 10)
    builder = PromptBuilder(Bank(), client(fake_llm, max_retries=1), prompts_per_class=1, llm_workers=1)
    result = builder.build(["zorblax", "quuxite", "blorft"])
    assert result.prompts[:2] == [["a photo of a zorblax."], ["a photo of a quuxite."]]
    assert result.sources[:2] == ["template", "template"]
    assert "HTTP 503" in result.llm_failures["zorblax"]
    assert "failed earlier" in result.llm_failures["quuxite"]
    assert len(fake_llm.requests) == 2  # one class, one retry; the second class was not asked


def test_one_bad_answer_only_costs_that_class(fake_llm: FakeLLM) -> None:
    fake_llm.script.append(Reply(body=chat_body("no idea")))
    builder = PromptBuilder(Bank(), client(fake_llm), prompts_per_class=2, llm_workers=1)
    result = builder.build(["zorblax", "quuxite"])
    assert result.sources == ["template", "llm"]
    assert result.prompts[1] == [
        "A quuxite is a table-sized, boxy object with a smooth grey or white surface.",
        "A quuxite is about as big as a kitchen table.",
    ]
    assert list(result.llm_failures) == ["zorblax"]


def test_llm_descriptions_are_cached_in_redis_and_asked_once(fake_llm: FakeLLM, redis_url: str) -> None:
    classes = ["zorblax", "Quuxite", "frobnicator"]
    first_store = EmbeddingStore(redis_url, "unused", PROMPT_VERSION)
    first = PromptBuilder(Bank(), client(fake_llm), prompts_per_class=1, store=first_store).build(classes)
    assert first.counts["llm"] == 3
    assert sorted(fake_llm.subjects()) == ["frobnicator", "quuxite", "zorblax"]
    stored = redis.Redis.from_url(redis_url).get(description_key(PROMPT_VERSION, "quuxite"))
    assert json.loads(stored)["prompts"][0] == first.prompts[1][0]

    # A new process: fresh memory, same Redis. The LLM server must not be asked again.
    second_store = EmbeddingStore(redis_url, "unused", PROMPT_VERSION)
    second = PromptBuilder(Bank(), client(fake_llm), prompts_per_class=1, store=second_store).build(classes)
    assert second.prompts == first.prompts
    assert second.sources == ["llm", "llm", "llm"]
    assert len(fake_llm.requests) == 3


def test_a_time_budget_bounds_how_long_a_build_waits_for_the_llm(fake_llm: FakeLLM) -> None:
    fake_llm.script.extend([Reply(body=chat_body(good_content("alpha")), delay_s=0.4)] * 2)
    names = ["alpha", "beta", "gamma", "delta"]
    builder = PromptBuilder(Bank(), client(fake_llm), llm_workers=1, llm_budget_s=0.6)
    token_count("load the tokenizer before the clock starts")
    started = time.perf_counter()
    result = builder.build(names)
    assert time.perf_counter() - started < 1.5
    assert result.sources == ["llm", "llm", "template", "template"]
    assert result.llm_failures == {
        name: "not asked: the LLM time budget of 0.6 s was used up" for name in ("gamma", "delta")
    }
    assert len(fake_llm.requests) == 2
