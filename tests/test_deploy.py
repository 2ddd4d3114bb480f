"""Deployment files: the Kubernetes manifests parse, validate against the Kubernetes
schemas (kubernetes-validate, offline) and agree with each other and with the server's
shutdown and probing; the image runs as a non-root user."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBERNETES = DEPLOY / "kubernetes"


def _documents(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def _resources() -> dict[tuple[str, str], dict]:  # type: ignore[type-arg]
    kustomization = _documents(KUBERNETES / "kustomization.yaml")[0]
    resources = {}
    for name in kustomization["resources"]:
        for document in _documents(KUBERNETES / name):
            resources[(document["kind"], document["metadata"]["name"])] = document
    return resources


def _flag(args: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} appears {len(values)} times"
    return values[0]


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    files = [str(KUBERNETES / name) for name in _documents(KUBERNETES / "kustomization.yaml")[0]["resources"]]
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *files], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_server_deployment_probes_shutdown_and_scraping_fit_together() -> None:
    resources = _resources()
    deployment = resources[("Deployment", "introspect")]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    args = container["args"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert _flag(args, "host") == "0.0.0.0"
    assert int(_flag(args, "port")) == ports["grpc"]
    assert int(_flag(args, "metrics-port")) == ports["metrics"]
    assert float(_flag(args, "max-connection-age-seconds")) > 0
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"]  # numeric, as native probes need
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + float(_flag(args, "grace-seconds"))
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]

    service = resources[("Service", "introspect")]
    assert service["spec"]["clusterIP"] == "None"  # headless: clients balance with round_robin
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    redis_url = _flag(args, "redis-url")
    redis_service = resources[("Service", "introspect-redis")]
    assert redis_url == f"redis://{redis_service['metadata']['name']}:{redis_service['spec']['ports'][0]['port']}/0"


def test_redis_is_a_bounded_lru_cache() -> None:
    redis = _resources()[("Deployment", "introspect-redis")]["spec"]["template"]["spec"]["containers"][0]
    args = redis["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert re.fullmatch(r"\d+[kmg]b", args[args.index("--maxmemory") + 1])
    assert redis["resources"]["limits"]["memory"]


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
