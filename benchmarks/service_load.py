"""The service under load: HTTP overhead over a direct Segmenter call, and throughput with batching on vs off.

One uvicorn worker (`python -m lsmseg.service`) with the default model (the demo checkpoint when present, else
the seeded random `tiny`), a 640×480 JPEG and 20 classes given inline:
  1. latency: p50/p95 of sequential POST /segment requests vs the same model's Segmenter.segment() on the
     decoded image in this process (target: HTTP p50 ≤ 1.10 × direct p50). The two alternate, one call each,
     so that both see the same machine load;
  2. throughput: 1, 4 and 8 concurrent clients for a fixed time, with batching on (max_batch 8) and off (1);
  3. overload: LSMSEG_QUEUE_SIZE=4, 1 client against 16 clients that retry every 503 (after its Retry-After,
     and after 50 ms): useful images/s and the p95 of accepted requests (target: 16 clients keep ≥ 90 % of
     the 1-client throughput);
  4. poison: one client's small requests (320×240, cached classes), quiet and while a 6000×6000 JPEG and a
     request with 1024 never-seen classes arrive every second (target: p95 ≤ 2× the quiet p95);
  5. registry: a worker on Redis (--redis-url; its database is emptied before and after): the worker's RSS
     before and after --registrations POST /vocab, and GET /vocab/{id} latency quiet and while another
     client pages through every vocabulary without pause (listing must not hold lookups up).

    python benchmarks/service_load.py
    python benchmarks/service_load.py --duration 20 --clients 1 4 8 16
    python benchmarks/service_load.py --torch-threads 1     # on a CPU shared with other jobs
    python benchmarks/service_load.py --parts overload poison
    python benchmarks/service_load.py --parts registry --redis-url redis://127.0.0.1:6379/13
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import redis
import torch
from PIL import Image

from lsmseg.prompt_cache import Bank, PromptBuilder
from lsmseg.service.loader import load_model, plan_model
from lsmseg.service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "service_load.json"


def photo_like_jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """Smooth regions, edges and a little noise: compresses and decodes like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), dtype=np.float32)
    horizon = height * 0.45
    image[..., 0] = np.where(y < horizon, 90 + 60 * y / horizon, 70 + 40 * x / width)
    image[..., 1] = np.where(y < horizon, 140 + 60 * y / horizon, 120 - 30 * (y - horizon) / height)
    image[..., 2] = np.where(y < horizon, 230, 60)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(horizon, height), rng.uniform(20, 80)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < r**2
        image[inside] = rng.uniform(0, 255, size=3)
    image += rng.normal(0, 6, size=image.shape)
    buffer = io.BytesIO()
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": statistics.median(ordered) * 1000, "p95_ms": p95 * 1000}


class DirectSegmenter:
    """The model the server would load, called in this process on the decoded image."""

    def __init__(self, jpeg: bytes, classes: list[str]) -> None:
        from lsmseg.model import Segmenter

        settings = Settings()
        model, info = load_model(plan_model(settings), settings)
        self.info = info.model_dump()
        self.segmenter = Segmenter(model, device=info.device)
        prompts = PromptBuilder(Bank(), prompts_per_class=info.prompts_per_class).build(classes).prompts
        with torch.no_grad():
            self.text = model.encode_text(prompts)
        self.rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        for _ in range(3):
            self()

    def __call__(self) -> float:
        start = time.perf_counter()
        self.segmenter.segment([self.rgb], self.text)
        return time.perf_counter() - start


class Server:
    """`python -m lsmseg.service` on a free port with the given LSMSEG_* settings."""

    def __init__(self, **settings: object) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {key: value for key, value in os.environ.items() if not key.startswith("LSMSEG_")}
        env.update({"LSMSEG_PORT": str(self.port), "LSMSEG_LOG_LEVEL": "warning"})
        env.update({f"LSMSEG_{key.upper()}": str(value) for key, value in settings.items()})
        self.process = subprocess.Popen([sys.executable, "-m", "lsmseg.service"], cwd=ROOT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def send(client: httpx.Client, jpeg: bytes, classes: list[str]) -> httpx.Response:
    return client.post(
        "/segment", files={"image": ("photo.jpg", jpeg, "image/jpeg")}, data={"classes": json.dumps(classes)}
    )


def post(client: httpx.Client, jpeg: bytes, classes: list[str]) -> float:
    start = time.perf_counter()
    response = send(client, jpeg, classes)
    response.raise_for_status()
    response.json()
    return time.perf_counter() - start


def latencies(
    server: Server, direct: DirectSegmenter, jpeg: bytes, classes: list[str], repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """(direct, HTTP) percentiles from alternating calls."""
    direct_samples, http_samples = [], []
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for _ in range(3):
            post(client, jpeg, classes)
        for _ in range(repeats):
            direct_samples.append(direct())
            time.sleep(0.05)  # let this process's OpenMP threads stop spinning before the server computes
            http_samples.append(post(client, jpeg, classes))
            time.sleep(0.05)
    return percentiles(direct_samples), percentiles(http_samples)


def run_clients(clients: int, run: Callable[[], None]) -> float:
    """Run `run` in `clients` threads at once; the seconds until the last one returned."""
    threads = [threading.Thread(target=run) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def throughput(server: Server, jpeg: bytes, classes: list[str], clients: int, duration: float) -> dict:
    """Each client sends its next request as soon as the previous one is answered."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration

    def run() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            post(client, jpeg, classes)  # warm connection
            while time.perf_counter() < stop_at:
                seconds = post(client, jpeg, classes)
                with lock:
                    latencies.append(seconds)

    elapsed = run_clients(clients, run)
    return {
        "clients": clients,
        "requests": len(latencies),
        "images_per_s": len(latencies) / elapsed,
        **percentiles(latencies),
    }


def overload(
    server: Server, jpeg: bytes, classes: list[str], clients: int, duration: float, retry_s: float | None
) -> dict:
    """Clients that send again at once after an answer, and retry a 503 after `retry_s` (None: after the
    server's Retry-After). Useful = answered 200; accepted p95 = latency of the attempts answered 200."""
    accepted: list[float] = []
    refused = failed = 0
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration

    def run() -> None:
        nonlocal refused, failed
        with httpx.Client(base_url=server.url, timeout=120) as client:
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                try:
                    response = send(client, jpeg, classes)
                except httpx.TransportError:  # e.g. the connection closed while the body was on its way
                    with lock:
                        failed += 1
                    continue
                seconds = time.perf_counter() - start
                with lock:
                    if response.status_code == 200:
                        accepted.append(seconds)
                    else:
                        refused += 1
                if response.status_code == 503:
                    time.sleep(float(response.headers["Retry-After"]) if retry_s is None else retry_s)

    elapsed = run_clients(clients, run)
    return {
        "clients": clients,
        "retry": "Retry-After" if retry_s is None else f"{retry_s * 1000:g} ms",
        "accepted": len(accepted),
        "refused": refused,
        "transport_errors": failed,
        "useful_images_per_s": len(accepted) / elapsed,
        **({"accepted_" + key: value for key, value in percentiles(accepted).items()} if accepted else {}),
    }


def big_jpeg() -> bytes:
    """6000×6000 pixels: a smooth gradient, as a camera's sky or wall would be."""
    row = np.linspace(0, 255, 6000, dtype=np.uint8)
    pixels = np.stack(
        [np.tile(row, (6000, 1)), np.tile(row[::-1], (6000, 1)), np.full((6000, 6000), 90, np.uint8)], 2
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()


def poisoned(server: Server, duration: float, poison: bool) -> dict:
    """One client's small requests (p50/p95), with or without a large image and 1024 new classes a second."""
    small = photo_like_jpeg(320, 240, seed=1)
    classes = Bank().vocabulary("ade150")[:10]
    latencies: list[float] = []
    outcomes: dict[str, list[int]] = {"6000x6000 JPEG": [], "1024 new classes": []}
    stop_at = time.perf_counter() + duration
    big = big_jpeg()

    def poison_request(kind: str) -> None:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            if kind == "6000x6000 JPEG":
                response = send(client, big, classes)
            else:
                response = send(
                    client, small, [f"never seen {uuid.uuid4().hex[:12]} {i}" for i in range(1024)]
                )
        outcomes[kind].append(response.status_code)

    def poisoner() -> None:
        threads = []
        while time.perf_counter() < stop_at:
            for kind in outcomes:
                threads.append(threading.Thread(target=poison_request, args=(kind,)))
                threads[-1].start()
            time.sleep(1.0)
        for thread in threads:
            thread.join()

    small_statuses: list[int] = []
    with httpx.Client(base_url=server.url, timeout=120) as client:
        post(client, small, classes)  # the small requests' text is cached from here on
        side = threading.Thread(target=poisoner) if poison else None
        if side is not None:
            side.start()
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            status = send(client, small, classes).status_code
            small_statuses.append(status)
            if status == 200:
                latencies.append(time.perf_counter() - start)
        if side is not None:
            side.join()
    statuses = {
        kind: {str(code): codes.count(code) for code in sorted(set(codes))}
        for kind, codes in outcomes.items()
    }
    return {
        "poison": poison,
        "requests": len(latencies),
        **percentiles(latencies or [float("nan")]),
        "small_statuses": {str(code): small_statuses.count(code) for code in sorted(set(small_statuses))},
        "poison_statuses": statuses,
    }


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux's /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def registry(server: Server, registrations: int, duration: float) -> dict:
    """RSS growth over `registrations` new vocabularies (3 bank classes each, so their text is encoded once),
    and lookup latency by id, quiet and while another client lists every page over and over."""
    names = Bank().vocabulary("ade150")
    vocab_ids: list[str] = []
    with httpx.Client(base_url=server.url, timeout=120) as client:
        client.post("/vocab", json={"classes": names[:3]}).raise_for_status()  # start-up allocations
        before = rss_mb(server.process.pid)
        start = time.perf_counter()
        for index in range(registrations):
            # A new list each time (up to 2500) of three different classes, their text encoded once.
            classes = [names[index % 50], names[50 + (index // 50) % 50], names[100 + (index * 7) % 50]]
            response = client.post("/vocab", json={"classes": classes})
            response.raise_for_status()
            vocab_ids.append(response.json()["vocab_id"])
        registering_s = time.perf_counter() - start
        after = rss_mb(server.process.pid)
        listing = threading.Event()
        pages = 0

        def lister() -> None:
            nonlocal pages
            with httpx.Client(base_url=server.url, timeout=120) as lister_client:
                while listing.is_set():
                    offset: int | None = 0
                    while offset is not None and listing.is_set():
                        page = lister_client.get("/vocab", params={"offset": offset, "limit": 100}).json()
                        offset = page["next_offset"]
                        pages += 1

        def lookups() -> list[float]:
            seconds = []
            stop_at = time.perf_counter() + duration
            rng = np.random.default_rng(0)
            while time.perf_counter() < stop_at:
                vocab_id = vocab_ids[int(rng.integers(len(vocab_ids)))]
                begin = time.perf_counter()
                client.get(f"/vocab/{vocab_id}").raise_for_status()
                seconds.append(time.perf_counter() - begin)
            return seconds

        quiet = lookups()
        listing.set()
        side = threading.Thread(target=lister)
        side.start()
        during = lookups()
        listing.clear()
        side.join()
    return {
        "registrations": registrations,
        "registrations_per_s": registrations / registering_s,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "lookup_quiet": {"requests": len(quiet), **percentiles(quiet)},
        "lookup_while_listing": {"requests": len(during), **percentiles(during), "pages_listed": pages},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=40, help="sequential requests for the latency part")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per throughput point")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--torch-threads", type=int, default=None, help="for both sides (default: torch's)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--registrations", type=int, default=2000, help="new vocabularies (≤ 2500)")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/13", help="the registry part's Redis (emptied!)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    server_settings: dict[str, object] = {"max_wait_ms": args.max_wait_ms}
    if args.torch_threads:
        server_settings["torch_threads"] = args.torch_threads

    jpeg = photo_like_jpeg()
    classes = Bank().vocabulary("ade150")[:20]
    report: dict[str, object] = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "image": "640×480 JPEG, 20 classes inline (ADE-150's first 20), output label_png",
        "settings": {
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "duration_s": args.duration,
        },
    }
    if "latency" in args.parts or "throughput" in args.parts:
        report.update(batching_parts(args, server_settings, jpeg, classes))
    if "overload" in args.parts:
        server = Server(max_batch=args.max_batch, queue_size=4, **server_settings)
        try:
            report["overload"] = [
                overload(server, jpeg, classes, clients, args.duration, retry_s)
                for clients, retry_s in ((1, None), (16, None), (16, 0.05))
            ]
        finally:
            server.stop()
    if "poison" in args.parts:
        server = Server(max_batch=args.max_batch, **server_settings)
        try:
            report["poison"] = [poisoned(server, args.duration, poison) for poison in (False, True)]
        finally:
            server.stop()
    if "registry" in args.parts:
        database = redis.Redis.from_url(args.redis_url)
        database.flushdb()
        server = Server(redis_url=args.redis_url, **server_settings)
        try:
            report["registry"] = registry(server, args.registrations, args.duration)
        finally:
            server.stop()
            database.flushdb()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"\nwritten to {args.out}")


PARTS = ("latency", "throughput", "overload", "poison", "registry")


def batching_parts(args: argparse.Namespace, server_settings: dict, jpeg: bytes, classes: list[str]) -> dict:
    """Parts 1 and 2: HTTP against a direct Segmenter call, and throughput with batching on and off."""
    direct_segmenter = DirectSegmenter(jpeg, classes)
    runs = []
    direct = latency = None
    for batching, max_batch in (("on", args.max_batch), ("off", 1)):
        server = Server(max_batch=max_batch, **server_settings)
        try:
            if batching == "on" and "latency" in args.parts:
                direct, latency = latencies(server, direct_segmenter, jpeg, classes, args.repeats)
            if "throughput" in args.parts:
                for clients in args.clients:
                    result = throughput(server, jpeg, classes, clients, args.duration)
                    runs.append({"batching": batching, "max_batch": max_batch, **result})
        finally:
            server.stop()
    parts: dict[str, object] = {"model": direct_segmenter.info, "throughput": runs}
    if direct is not None and latency is not None:
        parts["latency"] = {
            "direct": direct,
            "http": latency,
            "ratio_p50": latency["p50_ms"] / direct["p50_ms"],
            "ratio_p95": latency["p95_ms"] / direct["p95_ms"],
        }
    return parts


def print_report(report: dict) -> None:
    print(f"{os.cpu_count()} CPUs, 640×480 JPEG, 20 classes")
    if "model" in report:
        model = report["model"]
        print(f"model {model['name']} ({model['source']}) on {model['device']}")
    if "latency" in report:
        direct, latency = report["latency"]["direct"], report["latency"]["http"]
        print(f"\n{'latency':<22} {'p50 ms':>8} {'p95 ms':>8}")
        print(f"{'direct Segmenter':<22} {direct['p50_ms']:>8.1f} {direct['p95_ms']:>8.1f}")
        print(f"{'HTTP POST /segment':<22} {latency['p50_ms']:>8.1f} {latency['p95_ms']:>8.1f}")
        ratios = report["latency"]
        print(f"{'ratio (target ≤ 1.10)':<22} {ratios['ratio_p50']:>8.2f} {ratios['ratio_p95']:>8.2f}")
    if report.get("throughput"):
        print(f"\n{'batching':<9} {'clients':>7} {'img/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'requests':>9}")
        for run in report["throughput"]:
            print(
                f"{run['batching'] + ' (' + str(run['max_batch']) + ')':<9} {run['clients']:>7} "
                f"{run['images_per_s']:>7.2f} {run['p50_ms']:>8.1f} {run['p95_ms']:>8.1f} "
                f"{run['requests']:>9}"
            )
    if "overload" in report:
        rows = report["overload"]
        base = rows[0]["useful_images_per_s"]
        print("\noverload, LSMSEG_QUEUE_SIZE=4 (target: useful img/s ≥ 90 % of 1 client's)")
        print(
            f"{'clients':>7} {'retry':>12} {'useful img/s':>13} {'of 1 client':>12} {'accepted p95 ms':>16} "
            f"{'503s':>6} {'errors':>7}"
        )
        for row in rows:
            print(
                f"{row['clients']:>7} {row['retry']:>12} {row['useful_images_per_s']:>13.2f} "
                f"{row['useful_images_per_s'] / base:>11.0%} "
                f"{row.get('accepted_p95_ms', float('nan')):>16.1f} "
                f"{row['refused']:>6} {row['transport_errors']:>7}"
            )
    if "poison" in report:
        quiet, poisoned_run = report["poison"]
        print(
            "\npoison: small requests' latency while a 6000×6000 JPEG and 1024 new classes come every second"
        )
        print(f"{'':<10} {'p50 ms':>8} {'p95 ms':>8} {'answered':>9}  statuses")
        for label, run in (("quiet", quiet), ("poisoned", poisoned_run)):
            print(
                f"{label:<10} {run['p50_ms']:>8.1f} {run['p95_ms']:>8.1f} {run['requests']:>9}  "
                f"{run['small_statuses']}"
            )
        print(
            f"p95 ratio (target ≤ 2): {poisoned_run['p95_ms'] / quiet['p95_ms']:.2f}; "
            f"poison answers: {poisoned_run['poison_statuses']}"
        )


    if "registry" in report:
        row = report["registry"]
        quiet, during = row["lookup_quiet"], row["lookup_while_listing"]
        print(
            f"\nregistry: {row['registrations']} registrations ({row['registrations_per_s']:.0f}/s), "
            f"worker RSS {row['rss_before_mb']:.0f} -> {row['rss_after_mb']:.0f} MB "
            f"(+{row['rss_after_mb'] - row['rss_before_mb']:.0f})"
        )
        print(f"{'GET /vocab/{id}':<22} {'p50 ms':>8} {'p95 ms':>8} {'requests':>9}")
        for label, run in (("quiet", quiet), ("while listing", during)):
            print(f"{label:<22} {run['p50_ms']:>8.1f} {run['p95_ms']:>8.1f} {run['requests']:>9}")
        ratio = during["p95_ms"] / quiet["p95_ms"]
        print(f"pages listed meanwhile: {during['pages_listed']}; p95 ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
