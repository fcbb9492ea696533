"""`paas tokens`, `paas tokens create` and `paas tokens revoke`: join tokens for agents.

A token is shown in full once, when it is made, with the `paas agent` line that
uses it; the list shows the id, times, uses left and whether it was revoked,
never the secret (the scheduler keeps only its hash). Handlers make their call
through `SchedulerClient` and print through `render`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from paas.cli import render
from paas.cli.client import SchedulerClient
from paas.cli.commands import scheduler_addresses
from paas.proto import paas_pb2 as pb


def token_dict(token: pb.JoinToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "created": render.iso_time(token.created_at),
        "expires": render.iso_time(token.expires_at),
        "uses": token.uses,
        "uses_left": token.uses_left,
        "revoked": token.revoked,
    }


def token_state(token: pb.JoinToken, now: float) -> str:
    if token.revoked:
        return "revoked"
    if now >= token.expires_at:
        return "expired"
    if token.uses_left <= 0:
        return "used up"
    return "usable"


def render_tokens(items: Iterable[pb.JoinToken], as_json: bool = False) -> None:
    listed = list(items)
    if as_json:
        render.print_json([token_dict(token) for token in listed])
        return
    if not listed:
        render.info("no join tokens: make one with `paas tokens create`")
        return
    now = time.time()
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("id", "state", "created", "expires", "uses left"):
        table.add_column(column, justify="right" if column == "uses left" else "left", no_wrap=True)
    for token in listed:
        state = token_state(token, now)
        expires = token.expires_at - now
        table.add_row(
            token.id,
            Text(state, style="green" if state == "usable" else "dim"),
            render.ago(token.created_at, now),
            f"in {render.duration(expires)}" if expires > 0 else render.ago(token.expires_at, now),
            f"{token.uses_left}/{token.uses}",
        )
    render.console().print(table)


async def tokens(client: SchedulerClient, args: argparse.Namespace) -> None:
    render_tokens(await client.list_tokens(), as_json=args.json)


async def tokens_create(client: SchedulerClient, args: argparse.Namespace) -> None:
    made = await client.create_token(args.ttl, args.uses)
    uses = made.token.uses
    render.info(
        f"join token {made.token.id}: {uses} join{'s' if uses != 1 else ''}, expires in "
        f"{render.duration(round(made.token.expires_at - time.time()))}; it is shown only now"
    )
    # The token alone on stdout, for TOKEN=$(paas tokens create); the line to use it
    # beside the other words, on stderr.
    render.out(made.text)
    join = ",".join(scheduler_addresses(args))
    render.info("start an agent with it (its later starts need no token):")
    render.info(f"  paas agent --join {join} --name NAME --token {made.text}")


async def tokens_revoke(client: SchedulerClient, args: argparse.Namespace) -> None:
    token = await client.revoke_token(args.id)
    render.out(f"Revoked join token {token.id}: no agent can join with it")
