"""Deployment files: each kustomize overlay renders (kubectl kustomize) and validates
against the Kubernetes schemas (kubernetes-validate --strict, offline); the rendered
objects agree with each other and with the server's flags, shutdown, probing and
scraping; the image runs as a non-root user."""

from __future__ import annotations

import argparse
import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from introspect.config import add_serve_arguments

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ("cpu", "gpu")
SERVER = {"app.kubernetes.io/name": "introspect", "app.kubernetes.io/component": "server"}
REDIS = {"app.kubernetes.io/name": "introspect-redis", "app.kubernetes.io/component": "cache"}


def _documents(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


@functools.cache
def _rendered(overlay: str) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize v5) is needed to render the overlays; scripts/test.sh installs it"
    result = subprocess.run([kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _resources(overlay: str) -> dict[tuple[str, str], dict]:  # type: ignore[type-arg]
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(_rendered(overlay)) if d}


def _flag(args: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} appears {len(values)} times"
    return values[0]


def _server(overlay: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    pod = _resources(overlay)[("Deployment", "introspect")]["spec"]["template"]
    return pod, pod["spec"]["containers"][0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlays_validate_against_the_kubernetes_schemas(overlay: str, tmp_path: Path) -> None:
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(_rendered(overlay))
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", str(rendered)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = sorted(kind for kind, _ in _resources(overlay))
    assert kinds == ["Deployment", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "NetworkPolicy",
                     "PodDisruptionBudget", "Service", "Service"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_flags_are_the_servers_and_secrets_are_mounted_not_inlined(overlay: str) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    known = {option[2:] for action in parser._actions for option in action.option_strings}
    pod, container = _server(overlay)
    args = container["args"]
    used = {arg[2:].split("=", 1)[0] for arg in args}
    assert used <= known, used - known
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    secrets = {volume["name"]: volume["secret"]["secretName"] for volume in pod["spec"]["volumes"] if "secret" in volume}
    expected = {"tls-cert": "introspect-tls", "tls-key": "introspect-tls", "tls-client-ca": "introspect-tls",
                "auth-tokens-file": "introspect-auth", "cache-secret-file": "introspect-cache",
                "redis-password-file": "introspect-redis"}
    for flag, secret in expected.items():
        directory = str(Path(_flag(args, flag)).parent)
        assert secrets[mounts[directory]] == secret, flag
    assert not [d for d in yaml.safe_load_all(_rendered(overlay)) if d and d["kind"] == "Secret"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_deployment_probes_shutdown_and_scraping_fit_together(overlay: str) -> None:
    resources = _resources(overlay)
    pod, container = _server(overlay)
    args = container["args"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert _flag(args, "host") == "0.0.0.0"
    assert int(_flag(args, "port")) == ports["grpc"]
    assert int(_flag(args, "metrics-port")) == ports["metrics"]
    assert int(_flag(args, "health-port")) == ports["health"] != ports["grpc"]
    assert float(_flag(args, "max-connection-age-seconds")) > 0
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["health"]  # numeric and plaintext, as native probes need
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + float(_flag(args, "grace-seconds"))
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    [spread] = pod["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["labelSelector"]["matchLabels"] == SERVER

    service = resources[("Service", "introspect")]
    assert service["spec"]["clusterIP"] == "None"  # headless: clients balance with round_robin
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    redis_service = resources[("Service", "introspect-redis")]
    assert _flag(args, "redis-url") == f"redis://{redis_service['metadata']['name']}:{redis_service['spec']['ports'][0]['port']}/0"


def test_gpu_overlay_requests_a_gpu_on_gpu_nodes_with_the_cuda_image() -> None:
    pod, container = _server("gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 == container["resources"]["requests"]["nvidia.com/gpu"]
    assert pod["spec"]["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["spec"]["tolerations"])
    assert container["image"].endswith("-cuda") and _flag(container["args"], "device") == "cuda"
    cpu_pod, cpu_container = _server("cpu")
    assert "nvidia.com/gpu" not in str(cpu_container["resources"]) and "nodeSelector" not in cpu_pod["spec"]
    assert not cpu_container["image"].endswith("-cuda") and _flag(cpu_container["args"], "device") == "cpu"


def test_hpa_scales_the_deployment_on_the_adapters_queue_metric() -> None:
    resources = _resources("cpu")
    hpa = resources[("HorizontalPodAutoscaler", "introspect")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "introspect"}
    assert "replicas" not in resources[("Deployment", "introspect")]["spec"]  # the HPA owns it
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    [metric] = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "introspect_requests_queued"
    [rule] = _documents(DEPLOY / "monitoring" / "prometheus-adapter-rules.yaml")[0]["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert rule["seriesQuery"].startswith(metric["pods"]["metric"]["name"] + "{")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    # The scrape job gives the series the namespace and pod labels the rule maps.
    job = _documents(DEPLOY / "monitoring" / "prometheus-scrape.yml")[0]["scrape_configs"][0]
    targets = {rule.get("target_label") for rule in job["relabel_configs"]}
    assert {"namespace", "pod"} <= targets


def test_network_policies_admit_clients_prometheus_and_only_the_server_to_redis() -> None:
    resources = _resources("cpu")
    _, container = _server("cpu")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    server = resources[("NetworkPolicy", "introspect")]["spec"]
    assert server["podSelector"]["matchLabels"] == SERVER
    by_port = {rule["ports"][0]["port"]: rule["from"][0] for rule in server["ingress"]}
    assert set(by_port) == {"grpc", "metrics"} and {"grpc", "metrics"} <= ports.keys()
    assert by_port["grpc"]["podSelector"]["matchLabels"] == {"introspect-client": "true"}
    assert by_port["metrics"]["namespaceSelector"]["matchLabels"] and by_port["metrics"]["podSelector"]["matchLabels"]
    redis_ports = {port["port"] for rule in server["egress"] for port in rule["ports"]
                   if rule["to"][0]["podSelector"]["matchLabels"] == REDIS}
    assert redis_ports == {6379}
    redis = resources[("NetworkPolicy", "introspect-redis")]["spec"]
    assert redis["podSelector"]["matchLabels"] == REDIS and redis["policyTypes"] == ["Ingress"]
    [rule] = redis["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": SERVER}}] and rule["ports"][0]["port"] == 6379


def test_redis_is_a_bounded_lru_cache_with_a_password_from_the_secret() -> None:
    pod = _resources("cpu")[("Deployment", "introspect-redis")]["spec"]["template"]
    redis = pod["spec"]["containers"][0]
    args = redis["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert re.fullmatch(r"\d+[kmg]b", args[args.index("--maxmemory") + 1])
    assert redis["resources"]["limits"]["memory"]
    assert args[args.index("--protected-mode") + 1] == "yes"
    variable = re.fullmatch(r"\$\((\w+)\)", args[args.index("--requirepass") + 1]).group(1)  # type: ignore[union-attr]
    [env] = [env for env in redis["env"] if env["name"] == variable]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "introspect-redis", "key": "password"}
    server_pod, _ = _server("cpu")
    [volume] = [v for v in server_pod["spec"]["volumes"] if v.get("secret", {}).get("secretName") == "introspect-redis"]
    assert volume["secret"]["items"] == [{"key": "password", "path": "password"}]


def test_monitoring_scrape_config_keeps_annotated_pods() -> None:
    config = _documents(DEPLOY / "monitoring" / "prometheus-scrape.yml")[0]
    job = config["scrape_configs"][0]
    assert job["job_name"] == "introspect"
    kept = {tuple(rule["source_labels"]) for rule in job["relabel_configs"] if rule.get("action") == "keep"}
    assert ("__meta_kubernetes_pod_annotation_prometheus_io_scrape",) in kept


def test_image_runs_the_server_as_a_non_root_user() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", dockerfile, re.MULTILINE)
    assert "ARG PYTHON_IMAGE=python:3.12-slim" in dockerfile
    assert 'pip install ".[server]"' in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and not users[-1].startswith(("0", "root"))
    assert 'ENTRYPOINT ["python", "-m", "introspect"]' in dockerfile
    root = DEPLOY.parent
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.MULTILINE):
        for source in line.split()[:-1]:
            assert (root / source).exists(), f"COPY source {source} is missing"


def test_https_scrape_job_scrapes_the_same_pods_over_tls() -> None:
    plain = _documents(DEPLOY / "monitoring" / "prometheus-scrape.yml")[0]["scrape_configs"][0]
    job = _documents(DEPLOY / "monitoring" / "prometheus-scrape-tls.yml")[0]["scrape_configs"][0]
    assert job["job_name"] == "introspect-tls" and job["scheme"] == "https"
    assert job["relabel_configs"] == plain["relabel_configs"]
    assert job["kubernetes_sd_configs"] == plain["kubernetes_sd_configs"]
    tls = job["tls_config"]
    assert {Path(tls[key]).name for key in ("ca_file", "cert_file", "key_file")} == {"ca.crt", "tls.crt", "tls.key"}
    assert tls["server_name"] and not tls.get("insecure_skip_verify", False)
