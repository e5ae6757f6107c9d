"""Commands that talk to a running server over the public API: run, tail, flows, executions, approvals, keys.

Each command is a thin sync function that parses its options and hands one
coroutine to ``output.run`` (the CLI's only ``asyncio.run``). The server and key
come from ``TOLSTOY_URL`` / ``TOLSTOY_API_KEY`` or ``$TOLSTOY_HOME/credentials``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from tolstoy.cli import output
from tolstoy.cli.watch import Mode, exit_code, follow
from tolstoy.client import Client, NotFoundError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of tables.")]


def parse_vars(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; a value that is valid JSON is parsed as JSON, any other value is a string."""
    variables: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--var")
        try:
            variables[key.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            variables[key.strip()] = raw
    return variables


def _readable(path: Path) -> Path:
    if not path.is_file():
        output.fail(f"no such file: {path}")
    return path


def _mode(as_json: bool) -> Mode:
    return Mode.JSON if as_json else Mode.LIVE


def run(
    file: Annotated[Path, typer.Argument(help="A flow definition (YAML or JSON).")],
    var: Annotated[
        list[str] | None, typer.Option("--var", help="A variable KEY=VALUE (JSON or text); repeatable.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="Follow the execution live.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Apply FILE's flow (create, or a new version by name), start it and watch it live.

    Exits 0 when the execution completes, 1 when it fails or is cancelled.
    """
    variables = parse_vars(var or [])
    output.run(_run(_readable(file), variables, watch, as_json))


async def _run(file: Path, variables: dict[str, Any], watch: bool, as_json: bool) -> int:
    async with Client() as client:
        flow = await client.flows.apply(file)
        started = await client.executions.start(flow["id"], variables)
        execution_id = str(started["executionId"])
        if not as_json:
            verb = "created" if flow.get("version") == 1 else f"updated to version {flow.get('version')}"
            output.stderr().print(f"flow {flow['name']} ({flow['id']}) {verb}; started {execution_id}")
        if not watch:
            if as_json:
                output.print_json(
                    {"executionId": execution_id, "flowId": flow["id"], "status": started.get("status")}
                )
            else:
                typer.echo(execution_id)
            return 0
        try:
            status = await follow(client, execution_id, mode=_mode(as_json), flow=str(flow["name"]))
        except asyncio.CancelledError:  # Ctrl-C: the execution goes on without us
            typer.echo(
                f"stopped watching {execution_id}; follow it again with: tolstoy tail {execution_id}",
                err=True,
            )
            raise
        return exit_code(status)


def tail(
    execution_id: Annotated[str, typer.Argument(help="The execution to follow.")],
    since: Annotated[
        int, typer.Option(help="Only events with a larger seq (0: the whole history).", min=0)
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One raw event JSON per line.")] = False,
) -> None:
    """Follow one execution live, one line per event, until its terminal event (exit 0 if it completed)."""
    output.run(_tail(execution_id, since, as_json))


async def _tail(execution_id: str, since: int, as_json: bool) -> int:
    async with Client() as client:
        detail = await client.executions.get(execution_id)
        if as_json:
            return exit_code(await follow(client, execution_id, mode=Mode.JSON, since=since))
        flow = await client.flows.get(detail["flowId"])
        return exit_code(
            await follow(client, execution_id, mode=Mode.LINES, since=since, flow=str(flow["name"]))
        )


# flows


def flows_apply(
    files: Annotated[list[Path], typer.Argument(help="Flow definitions (YAML or JSON).")],
    as_json: JsonOpt = False,
) -> None:
    """Create each file's flow, or add a version to the flow of the same name."""
    output.run(_flows_apply([_readable(f) for f in files], as_json))


async def _flows_apply(files: list[Path], as_json: bool) -> None:
    async with Client() as client:
        applied = [(file, await client.flows.apply(file)) for file in files]
    if as_json:
        return output.print_json([flow for _, flow in applied])
    rows = [(str(file), f["name"], f["id"], str(f["version"]), "created" if f["version"] == 1 else "updated")
            for file, f in applied]  # fmt: skip
    output.stdout().print(output.table(None, ("file", "flow", "id", "version", "result"), rows, wrap="file"))


def flows_list(
    limit: Annotated[int, typer.Option(help="At most this many, newest first.", min=1, max=500)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The organization's flows."""
    output.run(_flows_list(limit, as_json))


async def _flows_list(limit: int, as_json: bool) -> None:
    async with Client() as client:
        page = await client.flows.list(limit=limit)
    if as_json:
        return output.print_json(page.items)
    rows = [(f["id"], f["name"], str(f["version"]), output.when(f.get("updatedAt")), f.get("description"))
            for f in page.items]  # fmt: skip
    output.stdout().print(
        output.table(None, ("id", "name", "version", "updated", "description"), rows, wrap="description")
    )


def flows_show(
    flow: Annotated[str, typer.Argument(help="A flow id (or name).")],
    as_json: JsonOpt = False,
) -> None:
    """One flow: its current version and steps."""
    output.run(_flows_show(flow, as_json))


async def _flows_show(flow_ref: str, as_json: bool) -> None:
    async with Client() as client:
        try:
            flow = await client.flows.get(flow_ref)
        except NotFoundError:
            found = None if flow_ref.startswith("flow_") else await client.flows.find(flow_ref)
            if found is None:
                raise
            flow = await client.flows.get(found["id"])
    if as_json:
        return output.print_json(flow)
    definition = flow.get("definition") or {}
    console = output.stdout()
    pairs = [
        ("id", flow["id"]),
        ("name", flow["name"]),
        ("version", str(flow["version"])),
        ("description", flow.get("description")),
        ("updated", output.when(flow["updatedAt"])),
        ("variables", definition.get("variables") or {}),
    ]
    console.print(output.details(pairs))
    rows = [_flow_step_row(s) for s in definition.get("steps", [])]
    console.print(output.table("steps", ("id", "type", "name", "depends on", "critical"), rows))


def _flow_step_row(step: dict[str, Any]) -> tuple[str, ...]:
    depends = step.get("dependsOn")
    after = ", ".join(depends) if depends is not None else "(previous)"
    return (
        step["id"],
        step["type"],
        step.get("name") or "",
        after,
        "yes" if step.get("critical", True) else "no",
    )


# executions


def executions_list(
    status: Annotated[list[str] | None, typer.Option(help="Only this status; repeatable.")] = None,
    flow: Annotated[str | None, typer.Option(help="Only executions of this flow id.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.", min=1, max=500)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Executions, newest first."""
    output.run(_executions_list(status or [], flow, limit, as_json))


async def _executions_list(status: list[str], flow: str | None, limit: int, as_json: bool) -> None:
    async with Client() as client:
        page = await client.executions.list(status=status, flow_id=flow, limit=limit)
    if as_json:
        return output.print_json(page.items)
    rows = [_execution_row(e) for e in page.items]
    columns = ("id", "flow", "status", "✓/✗/⤼/all", "created", "elapsed")
    output.stdout().print(output.table(None, columns, rows))


def _execution_row(e: dict[str, Any]) -> tuple[Any, ...]:
    created, elapsed = output.when(e.get("createdAt")), output.duration(e.get("elapsedTime"))
    return (e["id"], e["flowId"], output.status(e["status"]), _step_counts(e), created, elapsed)


def _step_counts(e: dict[str, Any]) -> str:
    counts = ("completedSteps", "failedSteps", "skippedSteps", "totalSteps")
    return "/".join(str(e.get(name, 0)) for name in counts)


def executions_show(
    execution_id: Annotated[str, typer.Argument(help="The execution.")],
    as_json: JsonOpt = False,
) -> None:
    """One execution: live status and its steps."""
    output.run(_executions_show(execution_id, as_json))


async def _executions_show(execution_id: str, as_json: bool) -> None:
    async with Client() as client:
        detail = await client.executions.get(execution_id)
        steps = await client.executions.steps(execution_id)
    if as_json:
        return output.print_json({**detail, "steps": steps})
    console = output.stdout()
    pairs = [
        ("id", detail["id"]),
        ("flow", f"{detail['flowId']} v{detail.get('flowVersion')}"),
        ("status", output.status(detail["status"])),
        ("progress", f"{detail.get('progressPercentage', 0):g}%"),
        ("current step", detail.get("currentStep")),
        ("steps ✓/✗/⤼/all", _step_counts(detail)),
        ("created", output.when(detail.get("createdAt"))),
        ("elapsed", output.duration(detail.get("elapsedTime"))),
        ("retrying", _retrying(detail.get("retrying"))),
        ("retry of", detail.get("retryOf")),
        ("variables", detail.get("variables")),
        ("output", detail.get("output")),
        ("error", detail.get("error")),
    ]
    console.print(output.details((k, v) for k, v in pairs if v is not None))
    rows = [(s["stepId"], s.get("type"), output.status(s.get("status")), str(s.get("attempt") or "-"),
             output.duration(s.get("duration")), _step_detail(s)) for s in steps]  # fmt: skip
    console.print(
        output.table(
            "steps", ("step", "type", "status", "attempt", "duration", "detail"), rows, wrap="detail"
        )
    )


def _retrying(retrying: dict[str, Any] | None) -> str | None:
    if not retrying:
        return None
    error = retrying.get("lastError") or {}
    message = error.get("message") if isinstance(error, dict) else error
    return (f"{retrying.get('stepId')}: attempt {retrying.get('nextAttempt')} at "
            f"{output.when(retrying.get('nextAttemptAt'))} after {message}")  # fmt: skip


def _step_detail(step: dict[str, Any]) -> str:
    if step.get("error"):
        error = step["error"]
        return output.truncate(str(error.get("message") if isinstance(error, dict) else error), 70)
    if step.get("reason"):
        return str(step["reason"])
    if step.get("status") == "retrying" and step.get("nextAttemptAt"):
        return f"next attempt {output.when(step['nextAttemptAt'])}"
    return (
        output.truncate(orjson.dumps(step["output"]).decode(), 70) if step.get("output") is not None else ""
    )


def _control(action: str, execution_id: str, as_json: bool, **options: Any) -> None:
    output.run(_do_control(action, execution_id, as_json, options))


async def _do_control(action: str, execution_id: str, as_json: bool, options: dict[str, Any]) -> None:
    async with Client() as client:
        result = await getattr(client.executions, action)(execution_id, **options)
    if as_json:
        return output.print_json(result)
    if action == "retry":
        new_id = result.get("executionId") or result.get("id")
        typer.echo(f"retrying {execution_id} as {new_id} (follow it with: tolstoy tail {new_id})", err=True)
        return typer.echo(new_id)
    typer.echo(f"{action} {execution_id}: {result.get('status', 'ok')}")


def executions_cancel(execution_id: Annotated[str, typer.Argument()], as_json: JsonOpt = False) -> None:
    """Cancel an execution: the running step is interrupted."""
    _control("cancel", execution_id, as_json)


def executions_pause(execution_id: Annotated[str, typer.Argument()], as_json: JsonOpt = False) -> None:
    """Pause an execution: the running step finishes, no new one starts."""
    _control("pause", execution_id, as_json)


def executions_resume(execution_id: Annotated[str, typer.Argument()], as_json: JsonOpt = False) -> None:
    """Resume a paused execution where it stopped."""
    _control("resume", execution_id, as_json)


def executions_retry(
    execution_id: Annotated[str, typer.Argument()],
    from_failed_step: Annotated[
        bool, typer.Option("--from-failed-step", help="Reuse the completed steps' outputs.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run an execution again as a new one (prints the new execution's id)."""
    _control("retry", execution_id, as_json, from_failed_step=from_failed_step)


# approvals


def approvals_list(
    status: Annotated[
        str, typer.Option(help="pending, granted, denied, expired, cancelled, or all.")
    ] = "pending",
    as_json: JsonOpt = False,
) -> None:
    """Approval requests of approval steps."""
    output.run(_approvals_list(None if status == "all" else status, as_json))


async def _approvals_list(status: str | None, as_json: bool) -> None:
    async with Client() as client:
        page = await client.approvals.list(status=status)
    if as_json:
        return output.print_json(page.items)
    rows = [_approval_row(a) for a in page.items]
    output.stdout().print(
        output.table(None, ("id", "execution", "step", "prompt", "status", "created"), rows, wrap="prompt")
    )


def _approval_row(a: dict[str, Any]) -> tuple[Any, ...]:
    prompt = output.truncate(str(a.get("prompt") or ""), 50)
    return (a["id"], a.get("executionId"), a.get("stepId"), prompt, output.status(a.get("status")),
            output.when(a.get("createdAt")))  # fmt: skip


def _decide(action: str, approval_id: str, comment: str | None, as_json: bool) -> None:
    output.run(_do_decide(action, approval_id, comment, as_json))


async def _do_decide(action: str, approval_id: str, comment: str | None, as_json: bool) -> None:
    async with Client() as client:
        result = await getattr(client.approvals, action)(approval_id, comment=comment)
    if as_json:
        return output.print_json(result)
    typer.echo(f"{approval_id}: {result.get('status', action)}")


CommentOpt = Annotated[str | None, typer.Option(help="A note recorded with the decision.")]


def approvals_grant(approval_id: Annotated[str, typer.Argument()], comment: CommentOpt = None,
                    as_json: JsonOpt = False) -> None:  # fmt: skip
    """Grant an approval: the waiting step completes and the execution goes on."""
    _decide("grant", approval_id, comment, as_json)


def approvals_deny(approval_id: Annotated[str, typer.Argument()], comment: CommentOpt = None,
                   as_json: JsonOpt = False) -> None:  # fmt: skip
    """Deny an approval: the waiting step fails."""
    _decide("deny", approval_id, comment, as_json)


# keys


def keys_create(
    name: Annotated[str, typer.Argument(help="What the key is for.")], as_json: JsonOpt = False
) -> None:
    """Create an API key for yourself; its secret is printed once."""
    output.run(_keys_create(name, as_json))


async def _keys_create(name: str, as_json: bool) -> None:
    async with Client() as client:
        created = await client.api_keys.create(name)
    if as_json:
        return output.print_json(created)
    typer.echo(f"created {created['id']} ({name}); the key is shown only now:", err=True)
    typer.echo(created["key"])


def keys_list(as_json: JsonOpt = False) -> None:
    """The organization's API keys (prefixes only)."""
    output.run(_keys_list(as_json))


async def _keys_list(as_json: bool) -> None:
    async with Client() as client:
        keys = await client.api_keys.list()
    if as_json:
        return output.print_json(keys)
    rows = [(k["id"], k["name"], k["prefix"] + "…", k.get("userId"), output.when(k.get("createdAt")),
             output.when(k.get("lastUsedAt"))) for k in keys]  # fmt: skip
    output.stdout().print(output.table(None, ("id", "name", "prefix", "user", "created", "last used"), rows))


def _group(app: typer.Typer, name: str, help: str, commands: dict[str, Any]) -> None:
    group = typer.Typer(help=help, no_args_is_help=True)
    for command, function in commands.items():
        group.command(command)(function)
    app.add_typer(group, name=name)


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(tail)
    _group(app, "flows", "Flows: apply definitions, list, show.",
           {"apply": flows_apply, "list": flows_list, "show": flows_show})  # fmt: skip
    _group(app, "executions", "Executions: list, show, cancel, pause, resume, retry.",
           {"list": executions_list, "show": executions_show, "cancel": executions_cancel,
            "pause": executions_pause, "resume": executions_resume, "retry": executions_retry})  # fmt: skip
    _group(app, "approvals", "Approvals: list, grant, deny.",
           {"list": approvals_list, "grant": approvals_grant, "deny": approvals_deny})  # fmt: skip
    _group(app, "keys", "API keys: create, list.", {"create": keys_create, "list": keys_list})
