"""The disk cache of fixed lines: a second rendering comes from disk, a new voice or text does not, pruning keeps
the recently used, and a cache that cannot be written still speaks."""

from __future__ import annotations

import os
from pathlib import Path

from agents.speech.tts import EspeakTts, PromptCache
from agents.speech.tts_cache import TtsDiskCache


class Counted:
    """The real espeak-ng engine, counting its syntheses."""

    def __init__(self, voice: str) -> None:
        self.engine = EspeakTts(voice)
        self.calls = 0

    @property
    def identity(self) -> str:
        return self.engine.identity

    def synthesize(self, text: str) -> tuple[bytes, int]:
        self.calls += 1
        return self.engine.synthesize(text)


def test_a_line_is_synthesised_once_then_read_from_disk(tmp_path: Path) -> None:
    en = Counted("en")
    first = TtsDiskCache(tmp_path).synthesize(en, "Welcome to the harbour.")
    again = TtsDiskCache(tmp_path).synthesize(en, "Welcome to the harbour.")  # as a restarted gateway would
    assert en.calls == 1 and again == first and first[1] == 22050 and len(first[0]) > 10000
    de = Counted("de")
    TtsDiskCache(tmp_path).synthesize(de, "Welcome to the harbour.")
    TtsDiskCache(tmp_path).synthesize(en, "Welcome to the harbour!")
    assert de.calls == 1 and en.calls == 2
    assert len(list(tmp_path.glob("*/*.wav"))) == 3 and not list(tmp_path.glob("*/*.tmp"))


def test_pruning_removes_the_least_recently_used(tmp_path: Path) -> None:
    en = Counted("en")
    cache = TtsDiskCache(tmp_path)
    for text in ["one", "two", "three"]:
        cache.synthesize(en, text)
        for p in tmp_path.glob("*/*.wav"):  # older files look older
            os.utime(p, (p.stat().st_mtime - 10, p.stat().st_mtime - 10))
    cache.synthesize(en, "one")  # used again: now the newest
    sizes = sorted(p.stat().st_size for p in tmp_path.glob("*/*.wav"))
    TtsDiskCache(tmp_path, max_bytes=sizes[-1] + sizes[0]).prune()
    cache.synthesize(en, "one")
    assert en.calls == 3, "'one' was pruned although it was used last"
    assert len(list(tmp_path.glob("*/*.wav"))) <= 2


def test_an_unwritable_cache_still_speaks(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    en = Counted("en")
    pcm, rate = TtsDiskCache(tmp_path / "file").synthesize(en, "Hello.")
    assert len(pcm) > 1000 and rate == 22050


def test_prepared_lines_stay_and_per_call_lines_are_bounded() -> None:
    import asyncio

    async def run() -> PromptCache:
        prompts = PromptCache(recent=2)
        await prompts.prepare("Hello.", "en")
        for n in ("one", "two", "three"):
            await prompts.render(f"Your order is {n}.", "en")
        assert await prompts.render("Hello.", "en") is await prompts.prepare("Hello.", "en")
        return prompts

    prompts = asyncio.run(run())
    assert list(prompts._recent) == [("en", "Your order is two."), ("en", "Your order is three.")]
