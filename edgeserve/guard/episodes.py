"""Drift episodes shared by the processes that serve one model version (``edgeserve serve --workers N``, or an app
run as several processes), so that the retraining trigger fires once per episode, not once per process.

Each process watches its own share of the traffic and finds drift on its own (a few requests apart, since they all
see the same stream). They meet in one small JSON file per model version in a folder they share, read and replaced
under an exclusive lock (``flock`` of a file beside it):

- a process whose monitor finds drift *joins* the episode (the first to join opens a new one);
- a process whose drift has held long enough *claims* the firing: only the first claim of an episode fires;
- a process whose drift is over, or that unloads the model, *leaves*; the episode ends when the last one has left,
  and the next onset anywhere opens a new one. A process that died is dropped from it the next time any reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError


class LocalEpisodes:
    """One process on its own: every claim fires (the monitor's own hysteresis already makes it once per episode)."""

    def join(self) -> None:
        pass

    def claim(self) -> bool:
        return True

    def leave(self) -> None:
        pass


class SharedEpisodes:
    """The episodes of the model version ``key`` (``name@version``), shared through a file in ``folder``."""

    def __init__(self, folder: str | os.PathLike[str], key: str) -> None:
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use {folder} for shared drift episodes: {exc}; give a writable folder") from None
        readable = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:60]
        self.path = folder / f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.episode"
        self.me = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        """This participant (a process may load one model version twice, in two runtimes)."""

    def join(self) -> None:
        self._update(self._enter)

    def claim(self) -> bool:
        """True for the first claim of the episode under way (which then fires), False for every later one."""
        won = []

        def change(state: dict[str, Any]) -> None:
            self._enter(state)
            won.append(not state["fired"])
            state["fired"] = True

        self._update(change)
        return won[0]

    def _enter(self, state: dict[str, Any]) -> None:
        if not state["members"]:  # nobody drifting: a new episode
            state["episode"] += 1
            state["fired"] = False
        state["members"][self.me] = os.getpid()

    def leave(self) -> None:
        self._update(lambda state: state["members"].pop(self.me, None))

    def state(self) -> dict[str, Any]:
        """The episode as the file holds it now: its number, whether it fired, who is drifting."""
        return self._update(lambda state: None)

    def _update(self, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        """Read, change and write the state under an exclusive lock (of a file beside it); the state is replaced
        whole, so a reader without the lock (an operator's ``cat``) never sees half of it."""
        from ..filelock import locked

        with locked(self.path.with_suffix(".lock")):
            try:
                state = _parsed(self.path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                state = _parsed("")
            state["members"] = {m: pid for m, pid in state["members"].items() if process_alive(pid)}
            change(state)
            part = self.path.with_suffix(f".{os.getpid()}.part")
            part.write_text(json.dumps(state, sort_keys=True), encoding="utf-8")
            os.replace(part, self.path)
            return state


def _parsed(text: str) -> dict[str, Any]:
    """The file's state; a fresh one for an empty or unreadable file (a process killed mid-write)."""
    try:
        state = json.loads(text) if text.strip() else {}
    except ValueError:
        state = {}
    if not isinstance(state, dict) or not isinstance(state.get("members"), dict):
        state = {}
    return {"episode": int(state.get("episode", 0)), "fired": bool(state.get("fired", False)),
            "members": dict(state.get("members", {}))}


def process_alive(pid: Any) -> bool:
    """Whether process ``pid`` runs, as one of this user's (another user's process of that number is not ours)."""
    if sys.platform == "win32":  # pragma: no cover - os.kill would end the process there
        return True
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):  # gone, another user's (PermissionError), or no number
        return False
    return True
