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
