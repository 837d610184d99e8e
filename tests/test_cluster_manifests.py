"""The KubeRay manifests in cluster/ against the KubeRay v1.7.0 CRD schemas (offline: no API server here)."""

from __future__ import annotations

import functools
import json
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


@functools.cache
def crd_schema(shared_data: Path, kind: str, version: str) -> dict:
    """A CRD's schema, parsed once a module: each CRD file is over a megabyte of YAML (libyaml's loader when
    PyYAML has it)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((shared_data / "kuberay" / CRD_FILES[kind]).read_text(), Loader=loader)
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


RAYJOBS = sorted((REPO / "cluster").glob("rayjob-*.yaml"))
STAGE_JOBS = {"ingest": "ingest", "annotate": "annotate", "select": "select_posts", "synthesize": "synthesize",
              "train": "train", "evaluate": "evaluate"}


def job_config(path: Path) -> tuple[str, object]:
    """(the job script, the config its entrypoint resolves): its --preset or --config, with its --set overrides."""
    from politune.config import resolve_config

    entrypoint = yaml.safe_load(path.read_text())["spec"]["entrypoint"]
    script = re.search(r"python /home/ray/politune/(jobs/\w+\.py)", entrypoint).group(1)
    preset = re.search(r"--preset (\S+)", entrypoint)
    config = re.search(r"--config (\S+)", entrypoint)
    assert preset or config, entrypoint
    if config:
        assert (REPO / config.group(1)).is_file(), config.group(1)  # the image holds the repo at /home/ray/politune
    return script, resolve_config(config and str(REPO / config.group(1)), preset and preset.group(1),
                                  re.findall(r"--set (\S+)", entrypoint))


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_every_rayjob_runs_a_job_file_with_a_config_that_resolves(path: Path) -> None:
    script, cfg = job_config(path)
    assert (REPO / script).is_file()
    assert cfg.storage_root.startswith("s3://")  # pods share no disk: the run directory is on S3
    assert (REPO / "cluster" / "Dockerfile").read_text().count("COPY --chown=ray:users jobs jobs") == 1


def test_there_is_a_rayjob_for_the_pipeline_and_for_every_stage_on_one_run() -> None:
    from politune.stages import pipeline_stages

    scripts = {job_config(p)[0]: job_config(p)[1] for p in RAYJOBS if "pipeline" not in p.name}
    _, pipeline = job_config(REPO / "cluster" / "rayjob-pipeline.yaml")
    assert set(pipeline_stages(pipeline)) == set(STAGE_JOBS)
    assert sorted(scripts) == sorted(f"jobs/{s}.py" for s in STAGE_JOBS.values())
    for cfg in scripts.values():  # each stage job works on the pipeline job's run: they compose
        assert cfg.run_uri == pipeline.run_uri


def gpu_groups(spec: dict) -> dict[str, tuple[int, int]]:
    """GPU worker groups of a RayCluster spec: name -> (GPUs a pod, most pods the autoscaler may start)."""
    groups = {}
    for group in spec["workerGroupSpecs"]:
        resources = group["template"]["spec"]["containers"][0]["resources"]
        gpus = int(resources["limits"].get("nvidia.com/gpu", 0))
        assert int(resources["requests"].get("nvidia.com/gpu", 0)) == gpus  # GPUs are requested as limited
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        if gpus:
            groups[group["groupName"]] = (gpus, group["maxReplicas"])
    return groups


def fits(groups: dict[str, tuple[int, int]], per_unit: int, units: int) -> bool:
    """Whether `units` blocks of `per_unit` GPUs fit, each block on one pod (a tensor-parallel replica, a Train
    worker): some group's pods hold a block and, at its most pods, all of them."""
    return any(gpus >= per_unit and (gpus // per_unit) * most >= units for gpus, most in groups.values())


@pytest.mark.parametrize("path", [p for p in RAYJOBS if "pipeline" in p.name], ids=lambda p: p.name)
def test_the_cluster_holds_what_the_jobs_config_asks_for(path: Path) -> None:
    """Each GPU stage's replicas x tensor (x pipeline) parallel GPUs fit the RayCluster's GPU groups."""
    cluster = yaml.safe_load((REPO / "cluster" / "raycluster.yaml").read_text())["spec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # drivers only on the head
    groups = gpu_groups(cluster)
    _, cfg = job_config(path)
    for stage in (cfg.annotate, cfg.synthesize):
        assert stage.engine == "vllm"
        per_replica = stage.tensor_parallel_size * stage.pipeline_parallel_size
        assert per_replica == 8 and fits(groups, per_replica, stage.concurrency), (per_replica, stage.concurrency)
    t = cfg.train
    assert t.use_gpu and fits(groups, int(t.gpus_per_worker), t.num_workers)
    s = cfg.serve
    assert fits(groups, s.tensor_parallel_size * s.pipeline_parallel_size, s.max_replicas)
    assert not fits(groups, 8, 5) and not fits(groups, 16, 1)  # the check can fail: beyond the groups' bounds


def test_the_rayservice_holds_its_serve_replicas() -> None:
    from politune.config import resolve_config

    service = yaml.safe_load((REPO / "cluster" / "rayservice.yaml").read_text())
    [app] = serve_config_of_the_rayservice()["applications"]
    s = resolve_config(None, app["args"]["preset"], app["args"]["set"]).serve
    groups = gpu_groups(service["spec"]["rayClusterConfig"])
    assert fits(groups, s.tensor_parallel_size * s.pipeline_parallel_size, s.max_replicas)
    assert min(most for _, most in groups.values()) >= 1 and s.min_replicas >= 1


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
    for path in RAYJOBS:
        job = yaml.safe_load(path.read_text())
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}, path.name


def test_the_grafana_dashboard_is_checked_whole_against_real_runs() -> None:
    """Every panel target queries a metric of a family a real run's test checks (test_serve: Serve's; test_annotate:
    annotation's; test_pipeline_job: the stages' and training's), through the dashboard's Prometheus variable; panel
    ids are unique."""
    from dashboard_check import DASHBOARD, FAMILIES, dashboard_queries

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    targets = [t for p in panels for t in p.get("targets", [])]
    assert targets and len(dashboard_queries()) == len(targets)
    for target in targets:
        assert any(family in target["expr"] for family in FAMILIES), target["expr"]
        assert target["datasource"]["uid"] == "${datasource}"
    titles = " ".join(p["title"] for p in panels)
    for wanted in ("Stage progress", "Annotation statuses", "Training loss", "Requests a second", "Queue wait",
                   "Time to first token", "Adapter loads and evictions"):
        assert wanted in titles, wanted
