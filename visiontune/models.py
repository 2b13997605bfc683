"""client.models: the registry — list, get, promote / unpin, aliases, rollback, history."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from app.schemas import ModelOut, Page, ServingChangeOut

if TYPE_CHECKING:
    from visiontune.transport import Transport


class Models:
    def __init__(self, transport: Transport) -> None:
        self._http = transport

    def list(self) -> builtins.list[ModelOut]:
        return self._http.get_as(builtins.list[ModelOut], "/models")

    def get(self, name: str) -> ModelOut:
        """A model's versions, which one serves, its pin and aliases."""
        return self._http.get_as(ModelOut, f"/models/{name}")

    def _change(self, method: str, path: str, body: dict[str, Any] | None = None) -> ModelOut:
        response = self._http.request(method, path, json=body)
        return self._http.parse(ModelOut, response)

    def promote(self, name: str, version: int, backend: str | None = None) -> ModelOut:
        """Pin a version: /predict serves it until unpinned (with `backend` when that export is verified)."""
        return self._change("POST", f"/models/{name}/versions/{version}/promote", {"backend": backend})

    def unpin(self, name: str) -> ModelOut:
        """Serve the best version again."""
        return self._change("DELETE", f"/models/{name}/pin")

    def set_alias(self, name: str, alias: str, version: int, backend: str | None = None) -> ModelOut:
        """Point an alias (e.g. production) at a version; predict with model=f"{name}@{alias}"."""
        return self._change("PUT", f"/models/{name}/aliases/{alias}", {"version": version, "backend": backend})

    def delete_alias(self, name: str, alias: str) -> ModelOut:
        return self._change("DELETE", f"/models/{name}/aliases/{alias}")

    def rollback(self, name: str, alias: str | None = None) -> ModelOut:
        """Move an alias (or, without one, the pin) back to where its latest change moved it from."""
        return self._change("POST", f"/models/{name}/rollback", {"alias": alias})

    def history(self, name: str, limit: int = 50, offset: int = 0) -> Page[ServingChangeOut]:
        """Every change of the pin and the aliases, newest first."""
        params = {"limit": limit, "offset": offset}
        return self._http.get_as(Page[ServingChangeOut], f"/models/{name}/history", params=params)
