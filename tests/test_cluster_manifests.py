"""The KubeRay manifests in cluster/ against the KubeRay v1.7.0 CRD schemas (offline: no API server here)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from politune.config import PRESETS

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((REPO / "cluster").glob("*.yaml"))
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}


def crd_schema(shared_data: Path, kind: str, version: str) -> dict:
    crd = yaml.safe_load((shared_data / "kuberay" / CRD_FILES[kind]).read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_its_crd(path: Path, shared_data: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    group, version = manifest["apiVersion"].split("/")
    assert group == "ray.io"
    jsonschema.validate(manifest, crd_schema(shared_data, manifest["kind"], version))


def test_a_bad_manifest_is_caught(shared_data: Path) -> None:
    manifest = yaml.safe_load((REPO / "cluster" / "raycluster.yaml").read_text())
    manifest["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest, crd_schema(shared_data, "RayCluster", "v1"))


def test_rayjob_entrypoint_runs_a_real_job_with_a_real_preset() -> None:
    job = yaml.safe_load((REPO / "cluster" / "rayjob-pipeline.yaml").read_text())
    entrypoint = job["spec"]["entrypoint"]
    script = re.search(r"python \S*/(jobs/\w+\.py)", entrypoint).group(1)
    assert (REPO / script).is_file()
    assert re.search(r"--preset (\S+)", entrypoint).group(1) in PRESETS


def test_no_job_file_shadows_a_standard_module() -> None:
    """`python jobs/x.py` puts jobs/ first on sys.path: jobs/select.py once broke every job's `import select`."""
    names = {p.stem for p in (REPO / "jobs").glob("*.py")}
    assert not names & set(sys.stdlib_module_names)


def serve_config_of_the_rayservice() -> dict:
    service = yaml.safe_load((REPO / "cluster" / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    return yaml.safe_load(service["spec"]["serveConfigV2"])  # a string in the CRD: it must parse on its own


@pytest.mark.parametrize("source", ["cluster/rayservice.yaml", "serve/llm.yaml"])
def test_serve_configs_deploy_the_politune_app_with_a_vllm_preset(source: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    from politune.config import resolve_config
    from politune.serve.llm_app import llm_config_kwargs

    config = serve_config_of_the_rayservice() if source.startswith("cluster") else \
        yaml.safe_load((REPO / source).read_text())
    ServeDeploySchema.model_validate(config)  # what `serve deploy` and KubeRay check
    [app] = config["applications"]
    assert app["import_path"] == "politune.serve.app:build_app" and app["route_prefix"] == "/"
    args = app["args"]
    assert args["preset"] in PRESETS
    cfg = resolve_config(None, args["preset"], args.get("set"))  # what build_app resolves
    assert cfg.serve.backend == "vllm"
    assert llm_config_kwargs(cfg)["lora_config"]["dynamic_lora_loading_path"].startswith("s3://")


def test_the_rayservice_serves_what_serve_llm_yaml_serves() -> None:
    assert serve_config_of_the_rayservice() == yaml.safe_load((REPO / "serve" / "llm.yaml").read_text())


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_credentials_come_only_from_kubernetes_secrets(path: Path) -> None:
    def containers(node):
        if isinstance(node, dict):
            if "containers" in node:
                yield from node["containers"]
            for value in node.values():
                yield from containers(value)
        elif isinstance(node, list):
            for value in node:
                yield from containers(value)

    for container in containers(yaml.safe_load(path.read_text())):
        for env in container.get("env", []):
            if re.search(r"KEY|TOKEN|SECRET|PASSWORD", env["name"]):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"], env


def test_serve_local_yaml_deploys_the_hf_app_of_the_local_preset() -> None:
    from ray.serve.schema import ServeDeploySchema

    from politune.config import resolve_config

    config = yaml.safe_load((REPO / "serve" / "local.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    [app] = config["applications"]
    assert app["import_path"] == "politune.serve.app:build_app"
    assert config["http_options"]["host"] == "127.0.0.1"  # a laptop's server is not exposed
    assert resolve_config(None, app["args"]["preset"], app["args"]["set"]).serve.backend == "hf"


def test_every_cluster_asks_for_rays_token_auth() -> None:
    """The job API, the dashboard and the client port of each cluster refuse callers without Ray's token, which
    comes from a Kubernetes secret; the head, where job drivers check gated model ids, holds HF_TOKEN."""
    cluster = yaml.safe_load((REPO / "cluster" / "raycluster.yaml").read_text())
    service = yaml.safe_load((REPO / "cluster" / "rayservice.yaml").read_text())
    for spec in (cluster["spec"], service["spec"]["rayClusterConfig"]):
        assert spec["authOptions"] == {"mode": "token", "secretName": "politune-ray-auth"}
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "HF_TOKEN" in {e["name"] for e in head.get("env", [])}
    job = yaml.safe_load((REPO / "cluster" / "rayjob-pipeline.yaml").read_text())
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}  # its token auth
