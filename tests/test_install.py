"""The install compiled the venvs' bytecode (Makefile): without it every Ray worker, replica and command compiles
torch, transformers, TRL, Ray and vLLM from source as it imports them (where PYTHONDONTWRITEBYTECODE is set, as here
and in CI, nothing is cached), and the suite takes twice as long. uv compiles only what one command installed, so a
step that forgets `--compile-bytecode` leaves a package without it; this names the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import VLLM_PYTHON

PACKAGES = ("torch", "transformers", "trl", "peft", "ray", "pyarrow")
VLLM_PACKAGES = ("torch", "transformers", "vllm", "ray")

# run in the venv's own python: the share of each package's .py files that have a cached .pyc beside them
SHARES = """
import importlib.util, json, sys
from pathlib import Path
shares = {}
for name in sys.argv[1:]:
    root = Path(importlib.util.find_spec(name).origin).parent
    sources = [p for p in root.rglob("*.py") if "site-packages" in str(p)]
    cached = sum(Path(importlib.util.cache_from_source(str(p))).is_file() for p in sources)
    shares[name] = cached / max(1, len(sources))
print(json.dumps(shares))
"""


def bytecode_shares(python: str, packages: tuple[str, ...]) -> dict[str, float]:
    import json

    done = subprocess.run([python, "-c", SHARES, *packages], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def installed_by_make(python: Path) -> bool:
    return (python.parents[1] / ".installed").is_file()


def test_the_project_venv_has_its_bytecode() -> None:
    if not installed_by_make(Path(sys.executable)):
        pytest.skip("this venv was not made by `make install`")
    missing = {name: share for name, share in bytecode_shares(sys.executable, PACKAGES).items() if share < 0.95}
    assert not missing, f"installed without bytecode (share of .py files compiled): {missing}"


@pytest.mark.vllm  # CI makes the vLLM venv after the unit tier
def test_the_vllm_venv_has_its_bytecode() -> None:
    if not VLLM_PYTHON.exists() or not installed_by_make(VLLM_PYTHON):
        pytest.skip("vLLM's CPU venv was not made by `make vllm-cpu`")
    missing = {name: share for name, share in bytecode_shares(str(VLLM_PYTHON), VLLM_PACKAGES).items()
               if share < 0.95}
    assert not missing, f"installed without bytecode (share of .py files compiled): {missing}"
