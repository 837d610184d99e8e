"""Checking a config's model references before any Ray worker loads them.

A reference is the embedded tiny model (`tiny`, built by prepare.py), a local model folder, or a Hugging Face
hub id. A worker that finds out a model is missing fails minutes later with a hub library's traceback; these
checks fail in a second, naming the config field, the reference and what to change.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
HUB_TIMEOUT_S = 10.0


class ModelReferenceError(ValueError):
    """A model reference that cannot be loaded; the message names the config field and what to set."""


def looks_local(ref: str) -> bool:
    """Whether a reference means a local folder: a path that starts like one, or a folder that exists."""
    return ref.startswith((".", "/", "~")) or Path(ref).expanduser().exists()


def check_model_reference(field: str, ref: str) -> str:
    """What from_pretrained loads for `ref` (a folder made absolute, or the hub id), once it is known to load:
    a local folder with a config, a tokenizer and weights, or a hub id that is in the local cache or that the
    hub will serve with the token at hand."""
    if "://" in ref:
        raise ModelReferenceError(f"{field}: {ref} is not a model reference this stage can load: name a local "
                                  "model folder or a Hugging Face model id (namespace/name)")
    if looks_local(ref):
        return check_local_model(field, ref)
    check_hub_model(field, ref)
    return ref


def check_local_model(field: str, ref: str) -> str:
    """The folder `ref` names, absolute, once it holds a config, a tokenizer and weights."""
    folder = Path(ref).expanduser()
    shown = ref if folder.is_absolute() else f"{ref} ({folder.absolute()})"
    if not folder.exists():
        raise ModelReferenceError(f"{field}: {shown} does not exist (expected a model folder with config.json, a "
                                  "tokenizer and weights)")
    if not folder.is_dir():
        raise ModelReferenceError(f"{field}: {shown} is a file, not a model folder")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer ({', '.join(TOKENIZER_FILES)})")
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        missing.append("weights (*.safetensors, *.bin)")
    if missing:
        raise ModelReferenceError(f"{field}: {shown} is not a complete model folder: it has no {'; no '.join(missing)}")
    return str(folder.absolute())


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), as the hub libraries read it."""
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=64)
def check_hub_model(field: str, repo_id: str) -> None:
    """A hub id is fine when its config is in the local cache, or when the hub grants this process access to it
    (the token, if any, from HF_TOKEN or a saved login). Answers are remembered for the process."""
    from huggingface_hub import constants, try_to_load_from_cache

    if not HUB_ID.fullmatch(repo_id):
        raise ModelReferenceError(f"{field}: {repo_id!r} is neither an existing local folder nor a Hugging Face "
                                  "model id (namespace/name)")
    not_local = "" if "/" not in repo_id else f" (and there is no local folder {repo_id})"
    cache = os.environ.get("HF_HUB_CACHE") or None  # read now: huggingface_hub reads it once, at import
    if isinstance(try_to_load_from_cache(repo_id, "config.json", cache_dir=cache), str):
        return
    if hub_offline():
        raise ModelReferenceError(
            f"{field}: {repo_id} is a Hugging Face model id{not_local}, HF_HUB_OFFLINE is set and the model is not in "
            f"the local cache ({cache or constants.HF_HUB_CACHE}): download it there first (`hf download {repo_id}`), "
            f"or set {field} to a local model folder")
    _ask_hub(field, repo_id, not_local)


def _ask_hub(field: str, repo_id: str, not_local: str) -> None:
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")
    has_token = bool(get_token())
    try:
        response = get_session().get(f"{endpoint}/api/models/{repo_id}/auth-check", headers=build_hf_headers(),
                                     timeout=HUB_TIMEOUT_S)
        hf_raise_for_status(response)
    except GatedRepoError:
        if has_token:
            raise ModelReferenceError(
                f"{field}: {repo_id} is a gated model and the token in HF_TOKEN has no access to it: accept its "
                "licence on the hub with that account, or set HF_TOKEN to a token of an account that did") from None
        raise ModelReferenceError(
            f"{field}: {repo_id} is a gated model and no token is set: accept its licence on the hub, then set "
            f"HF_TOKEN to a read token of that account (or set {field} to a local model folder)") from None
    except RepositoryNotFoundError:
        private = "" if has_token else "; if it is private, set HF_TOKEN"
        raise ModelReferenceError(f"{field}: the hub ({endpoint}) has no model {repo_id}{not_local}{private}") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise ModelReferenceError(f"{field}: the hub ({endpoint}) answered HTTP {status} about {repo_id}; set "
                                  f"{field} to a local model folder, or try again later") from None
    except Exception as err:  # the HTTP client's connection errors and time-outs
        raise ModelReferenceError(
            f"{field}: {repo_id} is a Hugging Face model id{not_local}, and the hub ({endpoint}) cannot be reached "
            f"from here ({type(err).__name__}: {err}): set {field} to a local model folder, or put the model in the "
            "Hugging Face cache (HF_HOME) and set HF_HUB_OFFLINE=1") from None
