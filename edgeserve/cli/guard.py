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
        folders: list[tuple[Path, str | None]] = [(target, None)]
    else:
        repo = Repository(target)
        folders = []
        for name in repo.names():
            version = repo.current(name)
            folders.append((repo.version_dir(name, version), f"{name}@{version}"))
        if not folders:
            raise click.ClickException(f"{target} is neither a package nor a repository with models")
    results = []
    for folder, served_as in folders:
        result = check(folder)
        result.served_as = served_as
        results.append(result)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2, default=str))
    else:
        for result in results:
            for line in result.lines():
                click.echo(line)
    if not all(r.ok for r in results):
        sys.exit(1)


@main.command()
@click.argument("target", metavar="REPO|URL")
@click.argument("name")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With REPO: an .npz of requests (arrays named as the model's inputs, rows on axis 0), in arrival "
                   "order, replayed through NAME's serving version.")
@click.option("--batch", type=click.IntRange(1, 65536), default=1, show_default=True,
              help="With --data: rows per request, as clients send them.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With URL: a file holding a bearer token with the 'metrics' scope (or set EDGESERVE_TOKEN).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def drift(target: str, name: str, data: Path | None, batch: int, token_file: Path | None, as_json: bool) -> None:
    """Drift of NAME against its package's reference: the score (1.0 = alarm), the features furthest off, the
    episode and the trigger. TARGET is a running server's URL (http://127.0.0.1:8000: its live state), or a
    repository with --data (requests replayed here, with the request at which the first alarm came)."""
    if target.startswith(("http://", "https://")):
        if data is not None:
            raise click.UsageError("--data goes with a repository, not a server URL")
        report = _server_drift(target, name, token_file)
    else:
        if data is None:
            raise click.UsageError("give --data FILE.npz to replay through the repository's model, or a server URL")
        if not Path(target).is_dir():
            raise click.BadParameter(f"{target} is neither a repository folder nor an http(s) URL",
                                     param_hint="REPO|URL")
        report = _replayed_drift(Path(target), name, data, batch)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    if not report.get("enabled", True):
        raise click.ClickException(f"no drift monitor for {name}: {report['why']}")
    state = "DRIFTING" if report["drifting"] else "in distribution"
    click.echo(f"{name}@{report['version']}: {state}, score {report['score']:.3f} over {report['requests']} rows "
               f"({report['features']} features, {report['detector']['false_alarm_budget']})")
    if report.get("first_alarm_request") is not None:
        click.echo(f"first alarm after {report['first_alarm_request']} rows")
    if report.get("resized"):
        click.echo(f"{report['resized']} rows of another size than the reference's: their inputs compared on location "
                   "only, their outputs not")
    for label, score in report["top"].items():
        click.echo(f"  {score:8.3f}  {label}")
    for w in report.get("workers") or []:  # a server of several worker processes: each watches its own share
        click.echo(f"worker {w['pid']} (version {w['version']}{'' if w['merged'] else ', not merged'}): "
                   f"{'DRIFTING' if w['drifting'] else 'in distribution'}, score {float(w['score'] or 0):.3f} "
                   f"over {w['requests']} rows")


def _replayed_drift(repo: Path, name: str, data: Path, batch: int) -> dict[str, Any]:
    import numpy as np

    from ..arrays import by_input, read_arrays
    from ..runtime.runtime import Runtime

    arrays = read_arrays(data, what="drift data")
    with Runtime(repo, models=[name]) as runtime:
        model = runtime.model(name)
        arrays = by_input(arrays, [s.name for s in model.inputs])
        missing = [s.name for s in model.inputs if s.name not in arrays]
        if missing:
            raise click.ClickException(f"{data} has no array named {', '.join(missing)}; it has {', '.join(arrays)}")
        names = [s.name for s in model.inputs]
        rows = len(arrays[names[0]])
        first_alarm = None
        for start in range(0, rows, batch):
            runtime.predict(name, {k: np.asarray(arrays[k][start:start + batch]) for k in names})
            if first_alarm is None and model.monitor is not None and model.monitor.alarms:
                first_alarm = model.monitor.rows
        report: dict[str, Any] = runtime.drift(name)
        if first_alarm is None and model.monitor is not None and model.monitor.alarms:
            first_alarm = model.monitor.rows  # the alarm came with the last, partial chunk
    report["first_alarm_request"] = first_alarm
    return report


def _server_drift(url: str, name: str, token_file: Path | None) -> dict[str, Any]:
    import os
    import urllib.error
    import urllib.parse
    import urllib.request

    token = token_file.read_text(encoding="utf-8").strip() if token_file else os.environ.get("EDGESERVE_TOKEN")
    request = urllib.request.Request(f"{url.rstrip('/')}/v2/models/{urllib.parse.quote(name, safe='')}/drift",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - http(s) only, checked above
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        try:
            why = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            why = exc.reason
        raise click.ClickException(f"{url}: {exc.code} {why}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


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
