"""`visiontune login` and `logout`: the server URL and API key kept in the user's config directory."""

from __future__ import annotations

from typing import Annotated

import typer

from visiontune import config
from visiontune.cli.common import JsonOpt, print_json, say
from visiontune.client import Client
from visiontune.errors import APIError, ClientError


def login(
    url: Annotated[
        str | None,
        typer.Option(help=f"The API's URL [default: VISIONTUNE_URL, the saved one, or {config.DEFAULT_URL}]"),
    ] = None,
    key: Annotated[str | None, typer.Option(help="An API key (vt_...); asked for, hidden, when left out")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a key against the server and keep the URL and key (file mode 600) for the other commands."""
    url = config.server_url(url, config.saved_login())
    if key is None:
        key = typer.prompt("API key", hide_input=True).strip()
    with Client(url, key) as client:
        note = ""
        try:
            client.datasets.list(limit=1)
        except APIError as exc:
            if exc.status != 403:  # 403: a valid key without the read scope (e.g. predict only)
                raise ClientError(f"{url} refused the key: {exc.message}") from None
            note = "the key is valid but cannot read datasets (its scopes are narrower than read)"
    path = config.save_login(config.Login(url=url, key=key))
    if as_json:
        print_json({"url": url, "config": str(path), "note": note or None})
        return
    say(f"Logged in to {url} (key {key[:10]}…, saved in {path})")
    if note:
        say(f"note: {note}")


def logout(as_json: JsonOpt = False) -> None:
    """Forget the saved URL and key."""
    removed = config.forget_login()
    if as_json:
        print_json({"logged_out": removed, "config": str(config.login_path())})
    else:
        say("Logged out." if removed else "Not logged in.")
