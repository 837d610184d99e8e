"""What stands between the network and the models, shared by both back ends: model ids checked against the
adapter registry, the bearer token, and errors in OpenAI's shape.

An adapter id is a registry name (`left`, `right-sft`): a request never names a path. Whatever a client
sends in `model`, the only strings that reach a file system or S3 are the paths the registry holds.
"""

from __future__ import annotations

import hmac
import re
import threading
import time
from dataclasses import dataclass

from openai.types.shared import ErrorObject

from politune.registry import AdapterEntry, load_registry

# what a registry name may look like; anything else is refused before the registry is even read
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
REREAD_INTERVAL_S = 1.0  # an unknown id re-reads the registry at most this often


class APIError(Exception):
    """A request the server refuses; `body()` is OpenAI's error shape, `status` the HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    @property
    def headers(self) -> dict[str, str]:
        """A 503 (overloaded, or a replica that failed) tells clients when to retry."""
        return {"Retry-After": "1"} if self.status == 503 else {}

    def body(self) -> dict:
        error = ErrorObject(message=self.message, type=self.type, param=self.param, code=self.code)
        return {"error": error.model_dump(exclude={"misalignment"})}


def overloaded(detail: str = "the model replicas are at capacity") -> APIError:
    return APIError(503, f"server overloaded: {detail}; retry later", type="overloaded_error", code="overloaded")


@dataclass(frozen=True)
class ServedModel:
    """What a model id resolved to: the base (adapter None) or one registered adapter."""

    model_id: str
    adapter: AdapterEntry | None

    @property
    def adapter_name(self) -> str | None:
        return self.adapter.name if self.adapter else None


class ModelCatalog:
    """The ids this endpoint serves: `<base_id>` and `<base_id>:<name>` for every adapter in the run's registry
    (or the `only` subset). An id not yet known re-reads the registry (throttled), so an adapter registered after
    the app started is served without a redeploy."""

    def __init__(self, run_uri: str, base_id: str, base_model: str, only: list[str] | None = None) -> None:
        self.run_uri, self.base_id, self.base_model, self.only = run_uri, base_id, base_model, only
        self._adapters: dict[str, AdapterEntry] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._read_at < REREAD_INTERVAL_S:
                return
            self._read_at = time.monotonic()
            registry = load_registry(self.run_uri)
            # an adapter trained on another base cannot be served on this one
            self._adapters = {name: entry for name, entry in registry.items()
                              if entry.base_model == self.base_model and (self.only is None or name in self.only)}

    @property
    def adapters(self) -> dict[str, AdapterEntry]:
        return dict(self._adapters)

    def model_ids(self) -> list[str]:
        return [self.base_id, *(f"{self.base_id}:{name}" for name in sorted(self._adapters))]

    def resolve(self, model: object) -> ServedModel:
        """The served model a request's `model` names; APIError 400 (not a string) or 404 (not served)."""
        if not isinstance(model, str) or not model:
            raise APIError(400, "model: expected a model id string, e.g. "
                           f"{self.base_id!r} or {self.base_id + ':left'!r}", param="model")
        if model == self.base_id:
            return ServedModel(model, None)
        prefix, sep, name = model.partition(":") if model.startswith(self.base_id + ":") else ("", "", "")
        if sep and ADAPTER_NAME.match(name):
            if name not in self._adapters:
                self.refresh()
            if name in self._adapters:
                return ServedModel(model, self._adapters[name])
        shown = model if len(model) <= 80 else model[:77] + "..."
        raise APIError(404, f"model {shown!r} is not served here; known ids: {', '.join(self.model_ids())}",
                       param="model", code="model_not_found")


def bearer_check(authorization: str | None, expected: str | None, env_name: str) -> None:
    """Refuse a request without the expected bearer token (when one is set). The message names the variable the
    server reads the token from, never the token."""
    if not expected:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise APIError(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>' with the token "
                       f"the server was given in ${env_name}", type="authentication_error", code="invalid_api_key")
