"""Speech engines that fail to load are named at their config line by `voicegate check` (a corrupt model for vosk,
whisper, moonshine and piper, an unknown engine), and a gateway's cascaded agent fails to prepare with the option."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agents.cascaded import CascadedFactory
from agents.config import CascadedAgentConfig, EngineLoadError
from telephony.cli import main


def _corrupt(folder: Path, *names: str) -> str:
    """A model folder whose files hold junk in place of weights."""
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"\x00not a model\xff" * 64)
    return str(folder)


def test_check_names_the_line_of_each_model_that_does_not_load(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEGATE_CACHE", str(tmp_path / "cache"))  # moonshine converts its models there
    vosk = _corrupt(tmp_path / "vosk", "am", "conf", "graph")
    whisper = _corrupt(tmp_path / "whisper", "model.bin", "config.json", "tokenizer.json")
    moonshine = _corrupt(tmp_path / "moonshine", "encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin")
    piper = tmp_path / "hi.onnx"
    _ = [p.write_bytes(b"junk") for p in (piper, tmp_path / "hi.onnx.json")]
    cfg = tmp_path / "vg.yaml"
    cfg.write_text(f"""\
agents:
  ko:
    type: cascaded
    asr:
      engine: vosk
      model_path: {vosk}
  multi:
    type: cascaded
    asr: {{engine: whisper, model_path: {whisper}}}
    voices:
      hi: {piper}
  en:
    type: cascaded
    asr:
      model_path: {moonshine}
routes:
  - match: "*"
    agent: ko
""")
    assert main(["check", str(cfg)]) == 1
    err = capsys.readouterr().err
    print(err)
    lines = err.splitlines()
    for where, model in [(f"{cfg}:6: agents.ko.asr.model_path:", vosk),
                         (f"{cfg}:9: agents.multi.asr.model_path:", whisper),
                         (f"{cfg}:11: agents.multi.voices.hi:", str(piper)),
                         (f"{cfg}:15: agents.en.asr.model_path:", moonshine)]:
        assert any(ln.startswith(where) and model in ln for ln in lines), (where, err)
    assert lines[-1] == f"{cfg}: 4 error(s)"


def test_an_unknown_engine_is_named_at_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "vg.yaml"
    cfg.write_text("agents:\n  a:\n    type: cascaded\n    asr:\n      engine: kaldi\nroutes:\n  - match: '*'\n"
                   "    agent: a\n")
    assert main(["check", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"{cfg}:5: agents.a.cascaded.asr.engine:" in err and "'moonshine'" in err, err


def test_a_cascaded_agent_that_cannot_load_its_voice_fails_to_prepare_at_the_option(tmp_path: Path) -> None:
    piper = tmp_path / "broken.onnx"
    _ = [p.write_bytes(b"junk") for p in (piper, tmp_path / "broken.onnx.json")]
    cfg = CascadedAgentConfig.model_validate({"type": "cascaded", "voice": str(piper)})
    factory = CascadedFactory("desk", cfg, where=("agents", "front", "cascade"))

    async def prepare() -> None:
        try:
            await factory.prepare()
        finally:
            await factory.close()

    with pytest.raises(EngineLoadError) as e:
        asyncio.run(prepare())
    assert e.value.loc == ("agents", "front", "cascade", "voice") and str(piper) in e.value.message
