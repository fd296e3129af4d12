"""doctor, drift and audit: the guardrails, from the command line."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from . import main


@main.command()
@click.argument("target", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor(target: Path, as_json: bool) -> None:
    """Check that this machine runs a package (or every serving model of a repository) as it was verified:
    library versions, CPU flags and engine against the manifest, and the golden samples re-run. Exit status 1
    when outputs no longer match within the recipe's tolerance."""
    from ..guard.doctor import doctor as check
    from ..package import is_package
    from ..runtime.repository import Repository

    if is_package(target):
        folders = [target]
    else:
        repo = Repository(target)
        folders = [repo.version_dir(name, repo.current(name)) for name in repo.names()]
        if not folders:
            raise click.ClickException(f"{target} is neither a package nor a repository with models")
    results = [check(folder) for folder in folders]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2, default=str))
    else:
        for result in results:
            for line in result.lines():
                click.echo(line)
    if not all(r.ok for r in results):
        sys.exit(1)


@main.command()
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help=".npz of requests (arrays named as the model's inputs, rows on axis 0), in arrival order.")
@click.option("--batch", type=click.IntRange(1, 65536), default=1, show_default=True,
              help="Rows per request, as clients send them.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def drift(repo: Path, name: str, data: Path, batch: int, as_json: bool) -> None:
    """Replay requests from --data through NAME's serving version and report drift against the package's
    reference: the score (1.0 = alarm), the features furthest off, and at which request an alarm came.
    A running server reports the same live in /metrics (edgeserve_drift_score) and Runtime.drift()."""
    import numpy as np

    from ..arrays import read_arrays
    from ..runtime.runtime import Runtime

    arrays = read_arrays(data, what="drift data")
    with Runtime(repo, models=[name]) as runtime:
        model = runtime.model(name)
        missing = [s.name for s in model.inputs if s.name not in arrays]
        if missing:
            raise click.ClickException(f"{data} has no array named {', '.join(missing)}; it has {', '.join(arrays)}")
        rows = len(next(iter(arrays.values())))
        first_alarm = None
        for start in range(0, rows, batch):
            runtime.predict(name, {k: np.asarray(arrays[k][start:start + batch]) for k in arrays
                                   if any(s.name == k for s in model.inputs)})
            if first_alarm is None and model.monitor is not None and model.monitor.alarms:
                first_alarm = model.monitor.rows
        report: dict[str, Any] = runtime.drift(name)
        if first_alarm is None and model.monitor is not None and model.monitor.alarms:
            first_alarm = model.monitor.rows  # the alarm came with the last, partial chunk
    report["first_alarm_request"] = first_alarm
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    if not report.get("enabled", True):
        raise click.ClickException(f"no drift monitor for {name}: {report['why']}")
    state = "DRIFTING" if report["drifting"] else "in distribution"
    click.echo(f"{name}@{report['version']}: {state}, score {report['score']:.3f} over {report['requests']} rows "
               f"({report['features']} features, {report['detector']['false_alarm_budget']})")
    if first_alarm is not None:
        click.echo(f"first alarm after {first_alarm} rows")
    for label, score in report["top"].items():
        click.echo(f"  {score:8.3f}  {label}")


@main.command()
@click.argument("words", nargs=-1, required=True, metavar="[verify] REPO|DB")
@click.option("--model", help="Only this model's records.")
@click.option("--since", help="Only records at or after this time: ISO 8601 (2026-11-26T10:00) or epoch seconds.")
@click.option("--request-id", help="Only the record of this request.")
@click.option("--limit", type=click.IntRange(1), help="At most this many records.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines, one record per line.")
def audit(words: tuple[str, ...], model: str | None, since: str | None, request_id: str | None,
          limit: int | None, as_json: bool) -> None:
    """Query the audit log of a repository (REPO/.edgeserve/audit.sqlite3) or a log file, or with `verify`,
    check its hash chain: exit status 1 if any record was edited, deleted, reordered or cut."""
    from ..guard.audit import query, verify

    if words[0] == "verify":
        if len(words) != 2:
            raise click.UsageError("usage: edgeserve audit verify REPO|DB")
        verdict = verify(_log_path(words[1]))
        if verdict.ok:
            head = f"; head {verdict.head[0]} {verdict.head[1][:16]}…" if verdict.head else ""
            click.echo(f"ok: {verdict.rows} records, chain intact{head}")
            return
        click.echo(f"TAMPERED: {len(verdict.problems)} problem(s) in {verdict.rows} records", err=True)
        for problem in verdict.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)
    if len(words) != 1:
        raise click.UsageError("usage: edgeserve audit REPO|DB [--model M] [--since T] [--request-id ID] [--json]")
    for row in query(_log_path(words[0]), model=model, since=_time(since), request_id=request_id, limit=limit):
        if as_json:
            click.echo(json.dumps(row, separators=(",", ":")))
        else:
            when = datetime.fromtimestamp(row["time"], timezone.utc).isoformat(timespec="milliseconds")
            what = row["flags"] if row["kind"] == "action" else row["kind"]
            click.echo(f"{row['seq']:>8} {when} {what:<10} {row['model'] or '-'}@{row['version'] or '-'} "
                       f"{row['outcome']:<14} {row['request_id'] or ''} {row['caller'] or ''}".rstrip())


def _log_path(target: str) -> Path:
    from ..runtime.runtime import default_audit_path

    path = Path(target)
    return Path(default_audit_path(path)) if path.is_dir() else path


def _time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither ISO 8601 nor epoch seconds", param_hint="--since") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
