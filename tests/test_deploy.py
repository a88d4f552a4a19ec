"""Dockerfile, compose files, Prometheus config and Kubernetes manifests: they parse and agree with each other
and with the service (its routes, settings, metrics and ports). `docker compose config` and a Dockerfile check
run where the Docker CLI can do them; this machine has the client but no compose plugin and no engine.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from model.config import PRESETS
from service.metrics import Metrics
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
DEMO_CHECKPOINT = "checkpoints/demo.safetensors"
DEMO_MAX_BYTES = 30 * 2**20
WORKER_PORT = 8000


class _ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags (!reset, !override) are not YAML's: keep the value, mark it."""


def _tagged(loader: yaml.Loader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _tagged)


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@cache
def app_routes() -> frozenset[str]:
    """The paths of the real app's API, from its OpenAPI schema (building the app loads no model)."""
    from service.app import create_app

    app = create_app(Settings(_env_file=None, preset="tiny"))
    return frozenset(app.openapi()["paths"])


def expand(value: str) -> str:
    """Compose interpolation with nothing set in the environment: ${X-default}, ${X:-default}, ${X}."""
    return re.sub(r"\$\{[A-Z_]+(?::?-([^}]*))?\}", lambda match: match.group(1) or "", str(value))


def settings_field(variable: str) -> str | None:
    """The Settings field an LSMSEG_* variable sets (None for other variables)."""
    if not variable.startswith("LSMSEG_"):
        return None
    return variable.removeprefix("LSMSEG_").lower()


# Dockerfile -------------------------------------------------------------------------------------------------
@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            instruction, _, arguments = current.strip().partition(" ")
            lines.append((instruction.upper(), arguments.strip()))
            current = ""
    return lines


def copy_sources() -> list[str]:
    """Build-context paths the Dockerfile COPYs (not those copied from another stage)."""
    sources = []
    for instruction, arguments in dockerfile():
        if instruction in ("COPY", "ADD") and "--from=" not in arguments:
            words = [word for word in arguments.split() if not word.startswith("--")]
            sources.extend(words[:-1])
    return sources


def stage(name: str) -> list[tuple[str, str]]:
    """The instructions of one build stage, FROM line included."""
    lines, inside = [], False
    for instruction, arguments in dockerfile():
        if instruction == "FROM":
            inside = arguments.split()[-1] == name
        if inside:
            lines.append((instruction, arguments))
    return lines


def build_args() -> dict[str, str]:
    pairs = [words for instruction, words in dockerfile() if instruction == "ARG" and "=" in words]
    return dict(pair.split("=", 1) for pair in pairs)


def env_of(lines: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for instruction, arguments in lines:
        if instruction == "ENV":
            env.update(pair.split("=", 1) for pair in arguments.split())
    return env


def dockerignored(path: str) -> bool:
    """Docker's .dockerignore rule, near enough: the last pattern matching the path or a folder above wins."""
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        globs = {glob, glob.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(prefix, g) for prefix in prefixes for g in globs):
            ignored = not negated
    return ignored


@pytest.mark.parametrize("source", copy_sources())
def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context(source):
    if source == DEMO_CHECKPOINT and not (ROOT / source).exists():
        history = subprocess.run(
            ["git", "log", "--oneline", "--", source], cwd=ROOT, capture_output=True, text=True
        ).stdout
        assert not history, f"{source} is in git history but missing here: the cpu image cannot build"
        pytest.skip(f"{source} is not trained yet (no commit has it); the cpu image needs it")
    path = ROOT / source
    assert path.exists(), f"the Dockerfile copies {source}, which does not exist"
    assert not dockerignored(source), f".dockerignore keeps {source} out of the build context"
    if source == DEMO_CHECKPOINT:
        from model import read_metadata

        assert path.stat().st_size <= DEMO_MAX_BYTES, f"{source} is over 30 MB"
        assert read_metadata(path)["config"].name == "demo"


def test_dockerignore_keeps_local_state_out_and_the_package_in():
    outside = (".venv/bin/python", ".git/HEAD", "runs/demo/log.txt", "model/__pycache__/cfm.cpython-311.pyc",
               "checkpoints/other.safetensors", "checkpoints/onnx-cache/x/model.onnx", "tests/conftest.py")
    for path in outside:
        assert dockerignored(path), path
    for path in ("pyproject.toml", "README.md", "model/cfm.py", "prompt_cache/bank/vocabularies/ade150.json",
                 "service/static/index.html", DEMO_CHECKPOINT):
        assert not dockerignored(path), path


def test_dockerfile_variants_user_healthcheck_and_command():
    args = build_args()
    stages = {arguments.split()[-1] for instruction, arguments in dockerfile() if instruction == "FROM"}
    assert args["VARIANT"] == "gpu"
    for variant in ("gpu", "cpu"):
        assert {f"torch-{variant}", f"final-{variant}"} <= stages
    # torch and onnxruntime-gpu share the base's CUDA and cuDNN: CUDA 13 + cuDNN 9 for onnxruntime-gpu 1.31.
    assert "cuda13" in args["GPU_BASE"] and "cudnn9" in args["GPU_BASE"] and "runtime" in args["GPU_BASE"]
    from importlib.metadata import PackageNotFoundError, version

    try:
        tested = version("onnxruntime-gpu")
    except PackageNotFoundError:
        tested = args["ORT_VERSION"]
    assert args["ORT_VERSION"] == tested, "the image pins another onnxruntime-gpu than the tests ran"
    runtime = stage("runtime")
    commands = [arguments for instruction, arguments in runtime if instruction == "RUN"]
    dependencies = next(i for i, command in enumerate(commands) if "pip install -r" in command)
    package = next(i for i, command in enumerate(commands) if "--no-deps" in command)
    assert dependencies < package, "dependencies must be installed in a layer before the source"
    user = [arguments for instruction, arguments in runtime if instruction == "USER"]
    assert user and user[-1] not in ("root", "0")
    env = env_of(runtime)
    assert int(env["LSMSEG_PORT"]) == WORKER_PORT and env["LSMSEG_HOST"] == "0.0.0.0"
    assert ("EXPOSE", str(WORKER_PORT)) in runtime
    healthcheck = next(arguments for instruction, arguments in runtime if instruction == "HEALTHCHECK")
    assert '"service.probe", "/healthz"' in healthcheck and "/healthz" in app_routes()
    assert ("CMD", '["python", "-m", "service"]') in runtime
    cpu_env = env_of(stage("final-cpu"))
    copied = [arguments.split()[-1] for instruction, arguments in stage("final-cpu") if instruction == "COPY"]
    assert cpu_env["LSMSEG_CHECKPOINT"] in copied  # the cpu image serves the checkpoint it carries


# docker compose ---------------------------------------------------------------------------------------------
@cache
def compose() -> dict:
    return load_yaml(ROOT / "docker-compose.yml")


def worker_env(services: dict) -> dict[str, str]:
    return {key: expand(value) for key, value in services["worker"]["environment"].items()}


def test_compose_worker_needs_only_services_that_exist():
    services = compose()["services"]
    assert {"worker", "redis", "prometheus"} <= set(services)
    worker = services["worker"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in services["redis"]
    env = worker_env(services)
    assert env["LSMSEG_REDIS_URL"] == "redis://redis:6379/0"
    fields = Settings.model_fields
    for variable in env:
        field = settings_field(variable)
        assert field is None or field in fields, f"{variable} is not a setting"
    given = {settings_field(k): v for k, v in env.items() if settings_field(k) and v}
    assert Settings(_env_file=None, **given).redis_url == env["LSMSEG_REDIS_URL"]

    assert env["LSMSEG_PRESET"] in PRESETS
    sam = PRESETS[env["LSMSEG_PRESET"]].sam
    assert sam is not None and env["LSMSEG_SAM_CHECKPOINT"] == f"/models/{sam.checkpoint_file}"
    assert env["LSMSEG_ONNX_CACHE_DIR"].startswith("/models/")
    assert "models:/models" in worker["volumes"] and "models" in compose()["volumes"]


def test_compose_worker_reserves_a_gpu_and_checks_a_real_route():
    worker = compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert worker["build"]["args"]["VARIANT"] == "gpu"
    published = [expand(port) for port in worker["ports"]]
    env = worker_env(compose()["services"])
    assert all(port.endswith(f":{env['LSMSEG_PORT']}") for port in published)
    test = worker["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "service.probe"] and test[4] in app_routes()


def test_compose_redis_persists_and_evicts_only_expiring_keys():
    services = compose()["services"]
    redis = services["redis"]
    command = [expand(word) for word in redis["command"]]
    option = {command[i]: command[i + 1] for i in range(1, len(command) - 1) if command[i].startswith("--")}
    assert option["--appendonly"] == "yes"
    assert option["--maxmemory-policy"] == "volatile-lru"
    # volatile-lru can only evict keys with an expiry: the workers must give the embeddings one.
    assert int(worker_env(services)["LSMSEG_EMBEDDING_TTL_S"]) > 0
    volume, target = redis["volumes"][0].split(":")
    assert target == "/data" and volume in compose()["volumes"]


def test_compose_prometheus_scrapes_the_worker_metrics_route():
    prometheus = compose()["services"]["prometheus"]
    mounts = {}
    for volume in prometheus["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"prometheus mounts {source}, which does not exist"
            mounts[target] = ROOT / source
    config = load_yaml(mounts["/etc/prometheus/prometheus.yml"])
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and "/metrics" in app_routes()
    (dns,) = job["dns_sd_configs"]
    assert dns["port"] == WORKER_PORT and dns["names"] == ["worker"]
    rule_files = [
        path
        for pattern in config["rule_files"]
        for target, source in mounts.items()
        if pattern.startswith(target + "/")
        for path in source.glob(pattern.removeprefix(target + "/"))
    ]
    assert rule_files, "no recording rules are mounted where prometheus.yml looks for them"


def test_compose_cpu_override_runs_the_demo_checkpoint_without_a_gpu():
    override = load_yaml(ROOT / "docker-compose.cpu.yml")["services"]["worker"]
    assert override["build"]["args"]["VARIANT"] == "cpu"
    assert override["deploy"]["resources"]["reservations"]["devices"] == []  # under !reset
    assert "!reset" in (ROOT / "docker-compose.cpu.yml").read_text()
    env = override["environment"]
    assert env["LSMSEG_CHECKPOINT"] == env_of(stage("final-cpu"))["LSMSEG_CHECKPOINT"]
    base = worker_env(compose()["services"])
    merged = {k: v for k, v in (base | env).items() if settings_field(k) and v}
    settings = Settings(_env_file=None, **{settings_field(k): v for k, v in merged.items()})
    assert settings.preset is None and settings.sam_checkpoint is None


# Prometheus recording rules ---------------------------------------------------------------------------------
def test_recording_rules_use_the_service_histograms_and_their_labels():
    metrics = Metrics()
    families = {family.name for family in text_string_to_metric_families(metrics.exposition()[0].decode())}
    labels = {
        "lsmseg_request_duration_seconds": set(metrics.request_duration._labelnames),
        "lsmseg_stage_duration_seconds": set(metrics.stage_duration._labelnames),
    }
    groups = load_yaml(ROOT / "deploy/prometheus/rules.yml")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    quantiles = set()
    for rule in rules:
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]
        for name in re.findall(r"lsmseg_[a-z_]+", rule["expr"]):
            family = re.sub(r"_(bucket|count|sum)$", "", name)
            assert family in families, f"{rule['record']} uses {name}, which the service does not export"
            for group in re.findall(r"by \(([^)]*)\)", rule["expr"]):
                assert {label.strip() for label in group.split(",")} <= labels[family] | {"le"}
        if "lsmseg_request_duration_seconds_bucket" in rule["expr"]:
            quantiles.add(float(re.search(r"histogram_quantile\(([0-9.]+)", rule["expr"]).group(1)))
    assert quantiles == {0.5, 0.95, 0.99}


# Kubernetes -------------------------------------------------------------------------------------------------
@cache
def k8s() -> dict[tuple[str, str], dict]:
    """(kind, name) -> manifest, for every file the kustomization lists."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"kustomization resources {sorted(listed)} != files {sorted(on_disk)}"
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for resource in kustomization["resources"]
        for doc in load_all(K8S / resource)
    }


def _worker() -> tuple[dict, dict]:
    deployment = k8s()["Deployment", "lsmseg-worker"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def test_k8s_worker_requests_a_gpu_and_probes_real_routes():
    deployment, container = _worker()
    for kind in ("requests", "limits"):
        assert container["resources"][kind]["nvidia.com/gpu"] == 1
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in app_routes() and ports[get["port"]] == WORKER_PORT
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == WORKER_PORT
    assert annotations["prometheus.io/path"] in app_routes()


def test_k8s_settings_service_and_storage_fit_together():
    deployment, container = _worker()
    (config_ref,) = [ref["configMapRef"]["name"] for ref in container["envFrom"] if "configMapRef" in ref]
    settings = k8s()["ConfigMap", config_ref]["data"]
    for variable in settings:
        field = settings_field(variable)
        assert field is None or field in Settings.model_fields, f"{variable} is not a setting"
    assert int(settings["LSMSEG_PORT"]) == WORKER_PORT
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = k8s()["Service", "lsmseg"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in {port["name"] for port in container["ports"]}
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v]
    for claim in claims:
        assert ("PersistentVolumeClaim", claim) in k8s()
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert settings["LSMSEG_SAM_CHECKPOINT"].startswith("/models/") and "/models" in mounts
    assert any(settings["LSMSEG_ONNX_CACHE_DIR"].startswith(mount) for mount in mounts - {"/models"})


def test_k8s_workers_share_one_persistent_redis():
    settings = k8s()["ConfigMap", "lsmseg-settings"]["data"]
    match = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", settings["LSMSEG_REDIS_URL"])
    assert match
    host, port = match.group(1), int(match.group(2))
    service = k8s()["Service", host]
    assert port in {p["port"] for p in service["spec"]["ports"]}
    redis = k8s()["StatefulSet", host]
    assert redis["spec"]["serviceName"] == host
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-lru"
    assert int(settings["LSMSEG_EMBEDDING_TTL_S"]) > 0
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]


def test_k8s_autoscaler_targets_the_worker_deployment_on_a_real_metric():
    hpa = k8s()["HorizontalPodAutoscaler", "lsmseg-worker"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "lsmseg-worker")
    assert ("Deployment", target["name"]) in k8s()
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    families = {family.name for family in text_string_to_metric_families(Metrics().exposition()[0].decode())}
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Pods":
            assert metric["pods"]["metric"]["name"] in families


# The Docker CLI, where it can -------------------------------------------------------------------------------
def _docker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.cpu.yml"]])
def test_docker_compose_config_accepts_the_files(files):
    """`docker compose config` only reads files: it needs the compose plugin, not a running engine."""
    if shutil.which("docker") is None:
        pytest.skip("the docker client is not installed")
    if _docker("compose", "version").returncode != 0:
        pytest.skip("the docker client has no compose plugin here (docker compose version fails)")
    result = _docker("compose", *[arg for file in files for arg in ("-f", file)], "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_dockerfile_passes_buildkit_checks():
    if shutil.which("docker") is None:
        pytest.skip("the docker client is not installed")
    if _docker("info").returncode != 0:
        pytest.skip("no Docker engine answers here (docker info fails); the Dockerfile is checked above")
    result = _docker("build", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr
