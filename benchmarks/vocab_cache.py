"""Text-embedding cache for an 847-class vocabulary (ADE-847): cold vs warm memory vs warm Redis.

  cold          empty memory, nothing in Redis: build nothing, encode all classes, write them back
  warm memory   the same store again: in-process LRU only
  warm Redis    a store without memory (memory_items=0) on a warm connection: one MGET + float16 decode
  new process   the first lookup of a fresh store: connecting and hashing the prompts, then the same
for the tiny preset's text tower and a random-init open_clip ViT-B/16 text tower (same cost as the real one).
Prompts come from PromptBuilder (bank sentences where authored, templates otherwise). Each run uses fresh
fingerprints, so "cold" really is cold, and deletes its keys afterwards.

  python benchmarks/vocab_cache.py [--redis-url redis://127.0.0.1:6379/0] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import open_clip
import redis
import torch
import torch.nn.functional as F
from redis.utils import HIREDIS_AVAILABLE

from lsmseg.model import build_model
from lsmseg.prompt_cache import KEY_PREFIX, Bank, EmbeddingStore, PromptBuilder, RedisLink

RESULTS = Path(__file__).parent / "results" / "vocab_cache.json"
EncodeFn = Callable[[list[list[str]]], torch.Tensor]


def tiny_tower() -> tuple[EncodeFn, int]:
    model = build_model("tiny").eval()
    return model.encode_text, model.config.prompts_per_class


def vit_b16_tower() -> tuple[EncodeFn, int]:
    clip = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")

    def encode(prompts: list[list[str]]) -> torch.Tensor:
        tokens = tokenizer([prompt for group in prompts for prompt in group])
        features = torch.cat([clip.encode_text(chunk) for chunk in tokens.split(256)])
        return F.normalize(features, dim=-1).view(len(prompts), len(prompts[0]), -1)

    return encode, 1  # the vit-b16-sam-l preset: one comprehensive prompt per class


def timed(call: Callable[[], torch.Tensor], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(name: str, encode: EncodeFn, per_class: int, redis_url: str, repeats: int) -> dict:
    classes = Bank().vocabulary("ade847")
    built = PromptBuilder(Bank(), prompts_per_class=per_class).build(classes)
    fingerprint = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    version = Bank().prompt_version
    store = EmbeddingStore(redis_url, fingerprint, version, memory_items=4096)
    cold = timed(lambda: store.get(built.prompts, encode), 1)[0]
    memory = timed(lambda: store.get(built.prompts, encode), repeats)
    first_calls = []
    for _ in range(5):
        redis_only = EmbeddingStore(RedisLink(redis_url), fingerprint, version, memory_items=0)
        started = time.perf_counter()
        result = redis_only.get(built.prompts, encode)
        first_calls.append(time.perf_counter() - started)
        redis_only.close()
    redis_only = EmbeddingStore(RedisLink(redis_url), fingerprint, version, memory_items=0)
    redis_only.get(built.prompts, encode)  # connects; later calls are like a running server's
    from_redis = timed(lambda: redis_only.get(built.prompts, encode), repeats)
    assert redis_only.counts().get(("encode", "computed"), 0) == 0, "warm Redis run had to encode"
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{KEY_PREFIX}emb:{fingerprint}:*", count=1000))
    payload = sum(client.strlen(key) for key in keys[:1]) * len(keys)
    client.delete(*keys)
    return {
        "tower": name,
        "classes": len(classes),
        "prompts_per_class": per_class,
        "dim": result.shape[-1],
        "prompt_sources": built.counts,
        "cold_s": cold,
        "warm_memory_ms": 1e3 * statistics.median(memory),
        "warm_memory_min_ms": 1e3 * min(memory),
        "warm_redis_ms": 1e3 * statistics.median(from_redis),
        "warm_redis_min_ms": 1e3 * min(from_redis),
        "warm_redis_p90_ms": 1e3 * statistics.quantiles(from_redis, n=10)[-1],
        "new_process_redis_ms": 1e3 * statistics.median(first_calls),
        "redis_payload_bytes": payload,
        "speedup_cold_over_warm_redis": cold / statistics.median(from_redis),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("LSMSEG_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    rows = [
        measure("tiny", *tiny_tower(), args.redis_url, args.repeats),
        measure("ViT-B/16", *vit_b16_tower(), args.redis_url, args.repeats),
    ]
    print(f"ADE-847 text embeddings, {torch.get_num_threads()} CPU threads, median of {args.repeats}")
    header = ("tower", "P", "D", "cold s", "memory ms", "Redis ms", "(min)", "new proc ms", "cold/Redis")
    print("{:<9} {:>2} {:>4} {:>8} {:>10} {:>9} {:>6} {:>12} {:>11}".format(*header))
    for row in rows:
        print(
            f"{row['tower']:<9} {row['prompts_per_class']:>2} {row['dim']:>4} {row['cold_s']:>8.2f} "
            f"{row['warm_memory_ms']:>10.2f} {row['warm_redis_ms']:>9.2f} {row['warm_redis_min_ms']:>6.2f} "
            f"{row['new_process_redis_ms']:>12.2f} {row['speedup_cold_over_warm_redis']:>10.0f}×"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    environment = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "redis_py": redis.__version__,
        "hiredis": HIREDIS_AVAILABLE,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "load_average_1min_after": os.getloadavg()[0],  # other work on the machine stretches the timings
    }
    RESULTS.write_text(json.dumps({"environment": environment, "results": rows}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
