"""Every request's shape, checked as if no CLI existed, before a handler reads anything.

The guard calls `check_request` on each unary request (the agents' stream
checks its hello with `check_agent_message`). Names follow common.names
(fullmatch), counts are bounded, strings carry no NUL and sizes keep to the
stated limits, so nothing is stored that no process can run and nothing too
big reaches etcd (which would refuse it with an error that reads like an
outage). What needs the stored state (is the app there, does the Procfile
have that type) stays with the handler.

Each check raises paas.common.errors.InvalidInput naming the field and the rule.
Pure: no I/O.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from paas.common.addresses import parse_address
from paas.common.configvars import (
    CONFIG_VARS_LIMIT,
    PROCFILE_LIMIT,
    check_config_vars,
    check_key,
    check_no_nul,
    check_size,
)
from paas.common.errors import InvalidInput
from paas.common.formation import MAX_INSTANCES_PER_TYPE
from paas.common.jointoken import MAX_TEXT as TOKEN_TEXT_LIMIT
from paas.common.jointoken import check_token_id, check_ttl, check_uses, parse_token
from paas.common.logformat import SCHEDULER_INSTANCE
from paas.common.names import (
    InstanceName,
    check_app_name,
    check_credential_name,
    check_node_name,
    check_process_type,
)
from paas.common.slugs import CHUNK_SIZE, check_digest
from paas.proto import paas_pb2 as pb

# An app directory is a path: PATH_MAX on Linux.
DIR_LIMIT = 4096
# What one Logs request may ask for.
MAX_LOG_LINES = 1_000_000  # as `paas logs -n` takes it
# A drain URL, a node's address, a label: no legitimate one comes near this.
TEXT_LIMIT = 2048
MAX_LABELS = 64
# Releases one ListReleases may ask for (--keep-releases is at most 1000).
MAX_RELEASES = 1000
# A release version: far above any an app makes, and within etcd keys' 10 digits.
MAX_VERSION = 9_999_999_999


def check_request(request: Message) -> None:
    """Check `request` by its type; a type without a check is a bug (RuntimeError)."""
    name = request.DESCRIPTOR.full_name
    check = _CHECKS.get(name)
    if check is None:
        raise RuntimeError(f"no check for requests of type {name}")
    check(request)


def has_check(full_name: str) -> bool:
    return full_name in _CHECKS


# ------------------------------------------------------------ pieces


def _app(name: str) -> None:
    if not name:
        raise InvalidInput("no app given")
    check_app_name(name)


def _process(process: str, scheduler: bool = False) -> None:
    """ "" (every process), a type (web) or one instance (web.3); with `scheduler`,
    also the scheduler's own lines."""
    if not process or (scheduler and process == SCHEDULER_INSTANCE):
        return
    if "." in process:
        InstanceName.parse(process)
    else:
        check_process_type(process)


def _text(what: str, text: str, limit: int = TEXT_LIMIT) -> None:
    check_no_nul(what, text)
    check_size(what, text, limit)


def _seconds(what: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{what} must be a time in unix seconds, not {value!r}")


# ------------------------------------------------------------ per request


def _create_app(request: pb.CreateAppRequest) -> None:
    _app(request.name)


def _destroy_app(request: pb.DestroyAppRequest) -> None:
    _app(request.name)
    if request.confirm != request.name:
        raise InvalidInput(
            f"destroying {request.name} deletes its releases, config, logs and drains: "
            f"--confirm NAME must repeat the app's name (--confirm {request.name})"
        )


def _deploy(request: pb.DeployRequest) -> None:
    _app(request.app)
    check_size("the Procfile", request.procfile, PROCFILE_LIMIT)
    check_no_nul("the Procfile", request.procfile)
    check_config_vars(request.env)
    if request.HasField("slug") == bool(request.dir):
        raise InvalidInput("a deploy names exactly one of a slug and an app directory (--in-place)")
    if request.HasField("slug"):
        check_digest(request.slug.digest)
        if request.slug.size <= 0:
            raise InvalidInput(f"a slug's size must be positive, got {request.slug.size}")
    else:
        check_no_nul("the app directory", request.dir)
        check_size("the app directory", request.dir, DIR_LIMIT)
        if not os.path.isabs(request.dir):
            raise InvalidInput(f"the app directory must be an absolute path, got {request.dir!r}")
    for type_, settings in request.settings.items():
        check_process_type(type_)
        if settings.check not in pb.ProcessSettings.Check.values():
            raise InvalidInput(f"{type_}: unknown check {settings.check}")


def _slug_digest(request: pb.StatSlugRequest | pb.FetchSlugRequest) -> None:
    check_digest(request.digest)


def _slug_upload(message: pb.SlugUpload) -> None:
    """One message of UploadSlug: the first names app and slug, every one may carry
    at most one chunk. Which message must be first is the handler's to check."""
    if message.app:
        _app(message.app)
    if message.HasField("slug"):
        check_digest(message.slug.digest)
        if message.slug.size <= 0:
            raise InvalidInput(f"a slug's size must be positive, got {message.slug.size}")
    if len(message.data) > CHUNK_SIZE:
        raise InvalidInput(
            f"a slug chunk holds at most {CHUNK_SIZE} bytes, got {len(message.data)}"
        )


def _list_releases(request: pb.ListReleasesRequest) -> None:
    _app(request.app)
    if not 0 <= request.limit <= MAX_RELEASES:
        raise InvalidInput(f"limit must be from 0 (all) to {MAX_RELEASES}, not {request.limit}")


def _version(what: str, version: int) -> None:
    if not 0 <= version <= MAX_VERSION:
        raise InvalidInput(f"{what}: a release version is from 1 to {MAX_VERSION}, not {version}")


def _get_release(request: pb.GetReleaseRequest) -> None:
    _app(request.app)
    _version("the release", request.version)


def _rollback(request: pb.RollbackRequest) -> None:
    _app(request.app)
    _version("the release to roll back to", request.version)


def _set_config(request: pb.SetConfigRequest) -> None:
    """Keys to set and to unset; whether those to unset are set, and the size of the
    config they make, need the current release (releases_api.py)."""
    _app(request.app)
    if not request.set and not request.unset:
        raise InvalidInput("no config var to set or unset given")
    check_config_vars(request.set)
    seen: set[str] = set()
    for key in request.unset:
        check_key(key)
        if key in seen:
            raise InvalidInput(f"config var {key} is given more than once")
        if key in request.set:
            raise InvalidInput(f"config var {key} is both set and unset")
        seen.add(key)
    check_size("the config vars to unset", "".join(request.unset), CONFIG_VARS_LIMIT)


def _scale(request: pb.ScaleRequest) -> None:
    _app(request.app)
    if not request.changes:
        raise InvalidInput("no formation change given")
    seen: set[str] = set()
    for change in request.changes:
        check_process_type(change.type)
        if change.op not in pb.FormationChange.Op.values():
            raise InvalidInput(f"unknown formation operation {change.op} for {change.type}")
        if not 0 <= change.count <= MAX_INSTANCES_PER_TYPE:
            raise InvalidInput(
                f"invalid count {change.count} for {change.type}: expected a whole number "
                f"from 0 to {MAX_INSTANCES_PER_TYPE}"
            )
        if change.type in seen:
            raise InvalidInput(f"process type {change.type!r} is given more than once")
        seen.add(change.type)


def _why(request: pb.WhyRequest) -> None:
    _app(request.app)
    if not request.instance:
        raise InvalidInput("no instance given: name one like web.3")
    InstanceName.parse(request.instance)


def _list_instances(request: pb.ListInstancesRequest) -> None:
    if request.app:
        _app(request.app)


def _restart(request: pb.RestartRequest) -> None:
    _app(request.app)
    _process(request.process)


def _stop(request: pb.StopRequest) -> None:
    _app(request.app)
    InstanceName.parse(request.instance)


def _drain(request: pb.DrainRequest | pb.RemoveNodeRequest) -> None:
    check_node_name(request.node)


def _logs(request: pb.LogsRequest) -> None:
    _app(request.app)
    _process(request.process, scheduler=True)
    if not 0 <= request.lines <= MAX_LOG_LINES:
        raise InvalidInput(f"lines must be from 0 to {MAX_LOG_LINES}, not {request.lines}")
    _seconds("since", request.since)
    _text("the app id", request.app_id, 64)
    for cursor in request.after:
        _text("a cursor's node", cursor.node, 256)
        _process(cursor.instance, scheduler=True)
        if cursor.seq < 0:
            raise InvalidInput(f"the cursor of {cursor.instance} has a negative seq")


def _drain_url(request: pb.AddDrainRequest | pb.RemoveDrainRequest) -> None:
    _app(request.app)
    _text("the drain URL", request.url)


def _app_only(request: pb.ListDrainsRequest) -> None:
    _app(request.app)


def _create_token(request: pb.CreateTokenRequest) -> None:
    # 0 asks for the default; anything else must be a lifetime and a count we take.
    if request.ttl != 0:
        check_ttl(request.ttl)
    if request.uses != 0:
        check_uses(request.uses)


def _revoke_token(request: pb.RevokeTokenRequest) -> None:
    check_token_id(request.id)


def _csr(what: str, csr: bytes) -> None:
    if not csr:
        raise InvalidInput(f"{what}: no certificate signing request given")
    if len(csr) > CSR_LIMIT:
        raise InvalidInput(f"{what}: a certificate signing request holds at most {CSR_LIMIT} bytes")


def _join(request: pb.JoinRequest) -> None:
    check_size("the join token", request.token, TOKEN_TEXT_LIMIT + 8)
    parse_token(request.token)
    check_node_name(request.node)
    _csr("join", request.csr)


# A PEM CSR for one P-256 key is under 1 KiB.
CSR_LIMIT = 16 * 1024
# The longest life an admin credential may be given.
MAX_CREDENTIAL_TTL = 10 * 365 * 86400


def _create_credentials(request: pb.CreateCredentialsRequest) -> None:
    check_credential_name(request.name)
    if not request.csr:
        raise InvalidInput("no certificate signing request given")
    if len(request.csr) > CSR_LIMIT:
        raise InvalidInput(f"a certificate signing request is at most {CSR_LIMIT} bytes")
    if not 0 <= request.ttl_seconds <= MAX_CREDENTIAL_TTL:
        raise InvalidInput(
            f"a credential's lifetime must be from 1 s to {MAX_CREDENTIAL_TTL // 86400} days, "
            f"not {request.ttl_seconds} s"
        )


def _credential_name(request: pb.RevokeCredentialsRequest) -> None:
    check_credential_name(request.name)


def _nothing(request: Message) -> None:
    pass


def check_agent_message(message: pb.AgentMessage) -> None:
    """An agent's message on its session: its hello above all (who it claims to be)."""
    kind = message.WhichOneof("kind")
    if kind == "hello":
        hello = message.hello
        check_node_name(hello.name)
        _text("the agent's address", hello.address)
        parse_address(hello.address)
        if hello.capacity < 0:
            raise InvalidInput(f"capacity must not be negative, got {hello.capacity}")
        if len(hello.labels) > MAX_LABELS:
            raise InvalidInput(f"a node may have at most {MAX_LABELS} labels")
        for key, value in hello.labels.items():
            _text("a label", key, 256)
            _text(f"the label {key}", value, 256)
    elif kind == "renew":
        _csr("renew", message.renew.csr)
    elif kind == "run":
        run = message.run
        if len(run.stdout) + len(run.stderr) > RUN_STDIN_LIMIT:
            raise InvalidInput("a run's output message holds at most 64 KiB")


# A one-off's command line, its words together, and one stdin message.
RUN_COMMAND_LIMIT = 32 * 1024
RUN_STDIN_LIMIT = 64 * 1024
# The signals a CLI may send a one-off's process group: Ctrl-C, Ctrl-\, hang-up,
# terminate, kill, a terminal resize and the user signals.
RUN_SIGNALS = frozenset({1, 2, 3, 9, 10, 12, 15, 28})


def check_run_env(env: dict[str, str] | Any) -> None:
    """--env K=V of a run: checked as config vars are (the reserved names included)."""
    check_config_vars(env)


def check_run_input(message: pb.RunInput, *, first: bool) -> None:
    """One message of Run: the first carries RunStart and nothing else, the others no
    RunStart; stdin within its limit, only the signals a terminal sends."""
    if first != message.HasField("start"):
        raise InvalidInput(
            "a run starts with what to run (RunStart), once"
            if first
            else "a run takes one RunStart, as its first message"
        )
    if message.app or message.name or message.output_taken:
        raise InvalidInput("app, name and output_taken are the scheduler's to set")
    if len(message.stdin) > RUN_STDIN_LIMIT:
        raise InvalidInput(
            f"a stdin message holds at most {RUN_STDIN_LIMIT} bytes, got {len(message.stdin)}"
        )
    if message.signal and message.signal not in RUN_SIGNALS:
        raise InvalidInput(
            f"signal {message.signal} cannot be sent to a run (only "
            f"{', '.join(str(s) for s in sorted(RUN_SIGNALS))})"
        )
    if not first:
        return
    start = message.start
    _app(start.app)
    words = list(start.command)
    if not words or not any(word.strip() for word in words):
        raise InvalidInput("no command to run: `paas run -- COMMAND ...` or `paas run TYPE`")
    for word in words:
        check_no_nul("the command", word)
    check_size("the command", " ".join(words), RUN_COMMAND_LIMIT)
    if start.type:
        check_process_type(start.type)
    check_run_env(start.env)
    if start.node:
        check_node_name(start.node)
    for what, value in (("columns", start.columns), ("lines", start.lines)):
        if not 0 <= value <= 10_000:
            raise InvalidInput(f"the terminal's {what} must be from 0 to 10000, got {value}")


_CHECKS: dict[str, Callable[[Any], None]] = {
    pb.CreateAppRequest.DESCRIPTOR.full_name: _create_app,
    pb.ListAppsRequest.DESCRIPTOR.full_name: _nothing,
    pb.DestroyAppRequest.DESCRIPTOR.full_name: _destroy_app,
    pb.DeployRequest.DESCRIPTOR.full_name: _deploy,
    pb.ScaleRequest.DESCRIPTOR.full_name: _scale,
    pb.ListReleasesRequest.DESCRIPTOR.full_name: _list_releases,
    pb.GetReleaseRequest.DESCRIPTOR.full_name: _get_release,
    pb.SetConfigRequest.DESCRIPTOR.full_name: _set_config,
    pb.RollbackRequest.DESCRIPTOR.full_name: _rollback,
    pb.ListInstancesRequest.DESCRIPTOR.full_name: _list_instances,
    pb.WhyRequest.DESCRIPTOR.full_name: _why,
    pb.ListNodesRequest.DESCRIPTOR.full_name: _nothing,
    pb.RestartRequest.DESCRIPTOR.full_name: _restart,
    pb.StopRequest.DESCRIPTOR.full_name: _stop,
    pb.DrainRequest.DESCRIPTOR.full_name: _drain,
    pb.RemoveNodeRequest.DESCRIPTOR.full_name: _drain,
    pb.LogsRequest.DESCRIPTOR.full_name: _logs,
    pb.AddDrainRequest.DESCRIPTOR.full_name: _drain_url,
    pb.RemoveDrainRequest.DESCRIPTOR.full_name: _drain_url,
    pb.ListDrainsRequest.DESCRIPTOR.full_name: _app_only,
    pb.StatSlugRequest.DESCRIPTOR.full_name: _slug_digest,
    pb.FetchSlugRequest.DESCRIPTOR.full_name: _slug_digest,
    pb.SlugUpload.DESCRIPTOR.full_name: _slug_upload,
    pb.AgentMessage.DESCRIPTOR.full_name: check_agent_message,
    pb.CreateTokenRequest.DESCRIPTOR.full_name: _create_token,
    pb.ListTokensRequest.DESCRIPTOR.full_name: _nothing,
    pb.RevokeTokenRequest.DESCRIPTOR.full_name: _revoke_token,
    pb.JoinRequest.DESCRIPTOR.full_name: _join,
    pb.CreateCredentialsRequest.DESCRIPTOR.full_name: _create_credentials,
    pb.ListCredentialsRequest.DESCRIPTOR.full_name: _nothing,
    pb.RevokeCredentialsRequest.DESCRIPTOR.full_name: _credential_name,
    # A stream: its handler checks each message with check_run_input.
    pb.RunInput.DESCRIPTOR.full_name: lambda message: check_run_input(
        message, first=message.HasField("start")
    ),
}
