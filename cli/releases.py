"""`paas config`, `config get/set/unset/load`, `paas releases`, `releases info` and
`paas rollback`: an app's config vars and its numbered releases.

Config lives with the app: it is the current release's env, and every change
makes one new release (as on Heroku). Each `prepare_*` checks its input as the
scheduler will (key names, reserved keys, NUL bytes, sizes), so a mistake is one
line with nothing sent; each handler makes its call through `SchedulerClient`,
prints through `render` and, for a change, waits for the rollout
(rollout_wait.py) unless --no-wait. Handlers never print directly.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from paas.cli import render
from paas.cli.appconfig import parse_dotenv
from paas.cli.client import SchedulerClient
from paas.cli.errors import CommandError
from paas.cli.rollout_wait import wait_as_asked
from paas.common.configvars import check_config_vars, check_key

_VERSION = re.compile(r"v?([0-9]{1,10})")


# ------------------------------------------------------------------ local checks


def prepare_get(args: argparse.Namespace) -> None:
    check_key(args.key)


def prepare_set(args: argparse.Namespace) -> None:
    """K=V words: each with '=', a key an app may set, each key once, within the limit."""
    if not args.pairs:
        raise CommandError("no KEY=VALUE given, e.g. `paas config set LOG_LEVEL=debug`")
    pairs: dict[str, str] = {}
    for word in args.pairs:
        key, equals, value = word.partition("=")
        if not equals:
            raise CommandError(
                f"expected KEY=VALUE, got {word!r} (to remove a var: `paas config unset {word}`)"
            )
        if key in pairs:
            raise CommandError(f"config var {key} is given more than once")
        pairs[key] = value
    check_config_vars(pairs)
    args.set_vars = pairs


def prepare_unset(args: argparse.Namespace) -> None:
    if not args.keys:
        raise CommandError("no config var given, e.g. `paas config unset LOG_LEVEL`")
    seen: list[str] = []
    for key in args.keys:
        check_key(key)
        if key in seen:
            raise CommandError(f"config var {key} is given more than once")
        seen.append(key)


def prepare_load(args: argparse.Namespace) -> None:
    """The vars of a .env file, read as `paas deploy` reads DIR/.env (literal)."""
    path = Path(args.file).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    args.set_vars = parse_dotenv(text, source=str(path))
    if not args.set_vars:
        raise CommandError(f"{path} sets no config vars (expected KEY=VALUE lines)")


def parse_version(text: str) -> int:
    """`v5` or `5`: a release version, 1 or more."""
    match = _VERSION.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise CommandError(f"invalid release version {text!r}: expected vN, e.g. v5")
    return int(match.group(1))


def prepare_version(args: argparse.Namespace) -> None:
    args.release_version = parse_version(args.version) if args.version is not None else 0


# ------------------------------------------------------------------ handlers


async def config(client: SchedulerClient, args: argparse.Namespace) -> None:
    release = await client.get_release(args.app)
    if not release.env and not args.json and not args.shell:
        render.info(f"{args.app} has no config vars: `paas config set KEY=VALUE` sets one")
        return
    render.config_vars(release.env, as_json=args.json, shell=args.shell)


async def config_get(client: SchedulerClient, args: argparse.Namespace) -> None:
    release = await client.get_release(args.app)
    if args.key not in release.env:
        raise CommandError(f"config var {args.key} is not set on {args.app} (`paas config`)")
    render.out(release.env[args.key])


async def config_set(client: SchedulerClient, args: argparse.Namespace) -> int:
    release = await client.set_config(args.app, args.set_vars)
    render.out(render.config_changed(args.app, release, args.set_vars, ()))
    return await wait_as_asked(client, args, release)


async def config_unset(client: SchedulerClient, args: argparse.Namespace) -> int:
    release = await client.set_config(args.app, {}, args.keys)
    render.out(render.config_changed(args.app, release, (), args.keys))
    return await wait_as_asked(client, args, release)


async def releases(client: SchedulerClient, args: argparse.Namespace) -> None:
    render.releases(args.app, await client.list_releases(args.app, args.num), as_json=args.json)


async def releases_info(client: SchedulerClient, args: argparse.Namespace) -> None:
    render.release_info(await client.get_release(args.app, args.release_version), as_json=args.json)


async def rollback(client: SchedulerClient, args: argparse.Namespace) -> int:
    release = await client.rollback(args.app, args.release_version)
    render.out(f"{release.description} of {args.app}: v{release.version}")
    return await wait_as_asked(client, args, release)
