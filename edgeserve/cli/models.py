"""models: the versioned model repository."""

from __future__ import annotations

from pathlib import Path

import click

from . import main


@main.group()
def models() -> None:
    """Manage a model repository: REPO/NAME/VERSION/ folders holding packages."""


def _audit(repo: Path, action: str, name: str, version: object = None, **detail: object) -> None:
    """One record in the repository's audit log, if it keeps one (``REPO/.edgeserve/audit.sqlite3``)."""
    from ..runtime.runtime import default_audit_path

    path = Path(default_audit_path(repo))
    if not path.is_file():
        return
    import getpass

    from ..guard.audit import AuditLog

    with AuditLog(path) as log:
        log.action(action=action, model=name, version=version, caller=f"cli:{getpass.getuser()}",
                   detail={k: v for k, v in detail.items() if v is not None} or None)


def _repo(root: Path, create: bool = False):
    from ..runtime.repository import Repository

    return Repository(root, create=create)


@models.command("list")
@click.argument("repo", type=click.Path(file_okay=False, path_type=Path))
def models_list(repo: Path) -> None:
    """Models, their versions and the one serving."""
    repository = _repo(repo)
    states = list(repository)
    if not states:
        click.echo(f"{repo}: no models (publish one with: edgeserve models publish {repo} NAME PACKAGE)")
    for state in states:
        versions = ", ".join(f"{v} (serving{', pinned' if state.pinned else ''})" if v == state.current else str(v)
                             for v in state.versions)
        click.echo(f"{state.name}: {versions or 'no versions'}")


@models.command("publish")
@click.argument("repo", type=click.Path(file_okay=False, path_type=Path))
@click.argument("name")
@click.argument("package", type=click.Path(exists=True, path_type=Path))
def models_publish(repo: Path, name: str, package: Path) -> None:
    """Copy PACKAGE into REPO as the next version of NAME (verified, atomic); it serves unless NAME is pinned (a
    running edgeserve serve switches within its --poll seconds)."""
    if package.is_file():  # NOTE: a model file, the most common mistake: say how to make a package of it
        raise click.ClickException(f"{package} is a file; PACKAGE is the folder 'edgeserve convert' writes. Make one "
                                   f"with: edgeserve convert {package} -o {package.stem}-pkg, then publish that")
    repository = _repo(repo, create=True)
    version = repository.publish(name, package)
    _audit(repo, "publish", name, version, package=str(package))
    state = repository.state(name)
    note = "" if state.current == version else f" (pinned: version {state.current} keeps serving)"
    click.echo(f"published {name} version {version}{note}")


@models.command("rollback")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
def models_rollback(repo: Path, name: str) -> None:
    """Serve the version before the current one (a running edgeserve serve within its --poll seconds)."""
    version = _repo(repo).rollback(name)
    _audit(repo, "rollback", name, version)
    click.echo(f"{name}: serving version {version}")


@models.command("pin")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
@click.argument("version")
def models_pin(repo: Path, name: str, version: str) -> None:
    """Serve VERSION of NAME and stay on it when newer versions are published."""
    v = _repo(repo).pin(name, version)
    _audit(repo, "pin", name, v)
    click.echo(f"pinned {name} to version {v}")


@models.command("unpin")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
def models_unpin(repo: Path, name: str) -> None:
    """Follow the newest version of NAME again."""
    v = _repo(repo).unpin(name)
    _audit(repo, "unpin", name, v)
    click.echo(f"{name}: serving the newest version, {v}")


@models.command("remove")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
@click.argument("version")
@click.option("--force", is_flag=True, help="Remove even the serving version (the newest remaining then serves).")
def models_remove(repo: Path, name: str, version: str, force: bool) -> None:
    """Delete VERSION of NAME."""
    _repo(repo).remove(name, version, force=force)
    _audit(repo, "remove", name, version, force=force or None)
    click.echo(f"removed {name} version {version}")
