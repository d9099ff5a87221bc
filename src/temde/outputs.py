"""One policy for every command that writes an output folder (`prepare`, `demo`, `train`, `index build`, `ablate`)
or an output file (`bench`): nothing is overwritten or reused silently.

- A missing or empty folder becomes the command's own: it gets a record, `temde-output.json`, naming the command
  and the settings that decide what the folder holds. The record is written before any work, so a killed
  command leaves a folder that the same request can pick up again.
- A non-empty folder that is not this command's own (no record of this command, no older output of it) is
  refused with one line: it holds something else.
- The command's own folder is reused only when its recorded settings equal the requested ones; otherwise the
  command refuses, naming the settings that differ and `--force` (start over), and `--resume` where the command
  has it. A folder written before records existed has no settings to compare, so it too needs `--force`.

`claim_folder` is the whole policy; `inspect_folder`, `differences` and `write_record` are its parts, for `train`,
whose settings live in its checkpoint. `claim_file` is the same rule for a single output file.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temde.errors import TemdeError

RECORD_FILE = "temde-output.json"
# What an older output of a command (written before records existed) looks like: a function of the folder that
# returns the settings it can reconstruct ({} when it cannot), or None when the folder is not such an output.
Legacy = Callable[[Path], "dict[str, Any] | None"]


class OutputFolderError(TemdeError):
    """An output folder or file that the command must not write into (the message says why and what to pass)."""


@dataclass
class Claim:
    """What `claim_folder` decided. state: "new" (missing or empty folder), "same" (this command's own, same
    settings: reuse it), "replace" (this command's own, --force given: start over; `differences` lists the
    settings that changed, if any)."""

    folder: Path
    state: str
    differences: list[str] = field(default_factory=list)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB blocks (multi-GB indexes and tarballs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_ready(value: Any) -> Any:
    """Settings as they read back from JSON (tuples become lists, paths strings), so a comparison with a
    record read from disk is not fooled by the container type."""
    return json.loads(json.dumps(value, default=str))


def read_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(folder) / RECORD_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputFolderError(f"{path}: unreadable output record ({exc}); delete it or choose another --out") \
            from None
    return record if isinstance(record, dict) else None


def write_record(folder: str | os.PathLike, command: str, settings: dict[str, Any]) -> None:
    from temde.data.vocab import atomic_write

    with atomic_write(Path(folder) / RECORD_FILE) as handle:
        json.dump({"command": command, "settings": _json_ready(settings)}, handle, indent=1, sort_keys=True)
        handle.write("\n")


def inspect_folder(folder: str | os.PathLike, command: str, legacy: Legacy | None = None) -> dict[str, Any] | None:
    """None for a missing or empty folder; else the settings this command recorded there ({} when an older
    output of it recorded none). A file, or a non-empty folder that is not this command's, is an
    OutputFolderError."""
    folder = Path(folder)
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise OutputFolderError(f"{folder}: exists and is not a folder; choose another --out")
    if not any(folder.iterdir()):
        return None
    record = read_record(folder)
    if record is not None and record.get("command") == command:
        settings = record.get("settings")
        return settings if isinstance(settings, dict) else {}
    older = legacy(folder) if legacy is not None and record is None else None
    if older is not None:
        return older
    what = f"a `temde {record.get('command')}` output" if record is not None else "not empty"
    raise OutputFolderError(f"{folder}: {what}, not a `temde {command}` output folder; choose a new or empty --out")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def differences(recorded: dict[str, Any], requested: dict[str, Any],
                names: dict[str, str] | None = None) -> list[str]:
    """'--epochs 2 (recorded: 14)' for every setting whose requested value differs from the recorded one. A
    setting is named by its option (key `dev_subset` -> `--dev-subset`) unless `names` says otherwise."""
    requested = _json_ready(requested)
    names = names or {}
    out = []
    for key in sorted(set(recorded) | set(requested)):
        if recorded.get(key) != requested.get(key):
            name = names.get(key, _flag(key))
            out.append(f"{name} {_show(requested.get(key))} (recorded: {_show(recorded.get(key))})")
    return out


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_show(v) for v in value) or "[]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return "none" if value is None else str(value)


def claim_folder(folder: str | os.PathLike, command: str, settings: dict[str, Any], *, force: bool = False,
                 legacy: Legacy | None = None, write: bool = True, resume_hint: str = "",
                 names: dict[str, str] | None = None) -> Claim:
    """Apply the policy to `folder` for `command` with these settings (see the module docstring).

    Refusals are OutputFolderErrors of one line. `resume_hint` is appended to a refusal where the command can
    continue its own output (e.g. ", or --resume to continue it"). `write=False` checks without writing the
    record (processes other than rank 0 of a distributed run). `names`: see `differences`.
    """
    folder = Path(folder)
    recorded = inspect_folder(folder, command, legacy)
    if recorded is None:
        state, diffs = "new", []
    else:
        diffs = (differences(recorded, settings, names) if recorded
                 else ["its settings were not recorded (made by an older temde)"])
        if not diffs and not force:
            return Claim(folder, "same")
        if not force:
            raise OutputFolderError(f"{folder}: holds a `temde {command}` output made with other settings: "
                                    f"{'; '.join(diffs)}; pass --force to replace it{resume_hint}, or choose "
                                    f"another --out")
        state = "replace"
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        write_record(folder, command, settings)
    return Claim(folder, state, diffs)


def claim_file(path: str | os.PathLike, *, force: bool = False, also: tuple[str | os.PathLike, ...] = ()) -> None:
    """An output file (and the files written `also` beside it) must not exist unless --force: a benchmark is a
    new measurement every time, so there is nothing to reuse."""
    for target in (Path(path), *map(Path, also)):
        if target.is_dir():
            raise OutputFolderError(f"{target}: is a folder; --out names the file to write")
        if target.exists() and not force:
            raise OutputFolderError(f"{target}: exists; pass --force to replace it, or choose another --out")
