"""CoquiTts loads a tiny coqui VITS model through coqui's real loader and speaks (noise) at the config's rate; a
multilingual one speaks the language the voice or the cascade gives it."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agents.cascaded import voice_runs
from agents.config import CascadedAgentConfig, EngineLoadError, ScriptedAgentConfig
from agents.scripted import ScriptedFactory
from agents.speech import coqui_tts
from agents.speech.coqui_tts import CoquiTts, coqui_voice, model_language, with_language
from agents.speech.tts import PromptCache, TtsError, engine_for, load_voice
from telephony.cli import main
from tests.audio import rms_db, to_array
from tests.coqui_tiny import HOP_LENGTH, SAMPLE_RATE, build_tiny_model

TEXT = "Hello from voicegate"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return build_tiny_model(tmp_path_factory.mktemp("coqui-tiny"))


@pytest.fixture(scope="module")
def tiny_speakers(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return build_tiny_model(tmp_path_factory.mktemp("coqui-tiny-speakers"), speakers=("ana", "ben"))


def test_speaks_pcm16_at_the_config_rate(tiny: tuple[str, str]) -> None:
    pcm, rate = CoquiTts(*tiny).synthesize(TEXT)
    assert rate == SAMPLE_RATE
    x = to_array(pcm)
    # whole frames of HOP_LENGTH samples, so coqui's trailing pad of 10000 zeros is cut; VITS gives each character
    # and each blank between them at least one frame
    assert len(x) % HOP_LENGTH == 0
    assert len(x) >= (2 * len(TEXT) + 1) * HOP_LENGTH
    assert rms_db(x) > -40.0


def test_blank_text_gives_no_audio(tiny: tuple[str, str]) -> None:
    assert CoquiTts(*tiny).synthesize("  ") == (b"", SAMPLE_RATE)


def test_multi_speaker_model_speaks_with_the_chosen_speaker(tiny_speakers: tuple[str, str]) -> None:
    pcm, rate = CoquiTts(*tiny_speakers, speaker="ben").synthesize(TEXT)
    assert rate == SAMPLE_RATE
    assert rms_db(to_array(pcm)) > -40.0


def test_speaker_must_be_one_the_model_has(tiny: tuple[str, str], tiny_speakers: tuple[str, str]) -> None:
    with pytest.raises(TtsError, match=r"no speaker 'zed'.*\['ana', 'ben'\]"):
        CoquiTts(*tiny_speakers, speaker="zed").synthesize(TEXT)
    with pytest.raises(TtsError, match=r"several speakers"):
        CoquiTts(*tiny_speakers).synthesize(TEXT)
    with pytest.raises(TtsError, match=r"single speaker"):
        CoquiTts(*tiny, speaker="ana").synthesize(TEXT)


@pytest.fixture(scope="module")
def tiny_multilingual(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return build_tiny_model(tmp_path_factory.mktemp("coqui-tiny-languages"), languages=("en", "de"))


def _seeded(engine: CoquiTts, text: str) -> bytes:
    """VITS samples noise: seed it so that two renderings differ only by what the model was given."""
    import torch

    torch.manual_seed(0)
    return engine.synthesize(text)[0]


def test_a_multilingual_model_speaks_the_language_it_is_given(tiny_multilingual: tuple[str, str]) -> None:
    en, de = CoquiTts(*tiny_multilingual, language="en"), CoquiTts(*tiny_multilingual, language="de")
    assert en.load() is de.load()  # one model serves both languages
    english = _seeded(en, TEXT)
    assert rms_db(to_array(english)) > -40.0
    assert _seeded(en, TEXT) == english
    assert _seeded(de, TEXT) != english  # the language embedding differs: the language reached the model


def test_a_multilingual_model_refuses_a_missing_or_unknown_language(tiny_multilingual: tuple[str, str]) -> None:
    with pytest.raises(TtsError, match=r"is multilingual \(its languages are \['de', 'en'\]\): add `language:`"):
        CoquiTts(*tiny_multilingual).synthesize(TEXT)
    with pytest.raises(TtsError, match=r"has no language 'fr': its languages are \['de', 'en'\]") as err:
        CoquiTts(*tiny_multilingual, language="fr").synthesize(TEXT)
    assert tiny_multilingual[0] in str(err.value)


def test_an_asr_language_code_finds_the_models_regional_name() -> None:
    names = ["en", "fr-fr", "pt-br", "pt-pt"]
    assert model_language("en", names) == "en"
    assert model_language("fr", names) == "fr-fr"  # YourTTS names its languages with a region
    assert model_language("pt", names) is None  # two regions: not a guess
    assert model_language("de", names) is None


def test_the_cascade_voices_a_reply_in_the_callers_language(tiny_multilingual: tuple[str, str]) -> None:
    voice = coqui_voice({"engine": "coqui", "model_path": tiny_multilingual[0], "language": "en"})
    assert voice_runs("Hallo.", None, {}, voice) == [(voice, "Hallo.")]  # nobody has spoken yet: its own language
    [(german, _)] = voice_runs("Hallo.", "de", {}, voice)
    assert german == with_language(voice, "de") and engine_for(german).synthesize("Hallo.")[0]
    assert voice_runs("Bonjour.", "fr", {}, voice) == [(voice, "Bonjour.")]  # a language the model lacks
    assert voice_runs("Okay.", "de", {"de": "de"}, voice) == [("de", "Okay.")]  # a voice of its own comes first


def test_check_names_the_line_that_asks_a_model_for_a_language_it_lacks(
        tiny_multilingual: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_multilingual[0]
    cfg = tmp_path / "vg.yaml"
    cfg.write_text(f"""\
agents:
  desk:
    type: cascaded
    voice: {{engine: coqui, model_path: {model}, language: en}}
    voices:
      de: {{engine: coqui, model_path: {model}}}
      fr: {{engine: coqui, model_path: {model}}}
  greeter:
    type: scripted
    voice: {{engine: coqui, model_path: {model}}}
    start: a
    nodes:
      a: [{{say: "Hello."}}]
routes:
  - match: '*'
    agent: desk
""")
    assert main(["check", str(cfg)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"{cfg}:7: agents.desk.voices.fr: coqui model {model} has no language 'fr': its languages " \
                       "are ['de', 'en']", lines
    assert lines[1].startswith(f"{cfg}:10: agents.greeter.voice: coqui model {model} is multilingual"), lines
    assert lines[2:] == [f"{cfg}: 2 error(s)"]


def test_each_language_the_asr_reports_is_asked_of_the_default_voice(tiny_multilingual: tuple[str, str]) -> None:
    voice = coqui_voice({"engine": "coqui", "model_path": tiny_multilingual[0], "language": "en"})
    cfg = CascadedAgentConfig.model_validate({"type": "cascaded", "voice": voice, "voices": {"hi": "hi"},
                                              "asr": {"engine": "whisper", "language": "hi,de,ta"}})
    options = cfg.voice_options()
    assert options == [(("voice",), voice), (("voices", "hi"), "hi"), (("voice",), with_language(voice, "de")),
                       (("voice",), with_language(voice, "ta"))]
    load_voice(options[2][1])
    with pytest.raises(TtsError, match="has no language 'ta'"):
        load_voice(options[3][1])


def test_missing_files_are_named(tiny: tuple[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.pth")
    with pytest.raises(TtsError, match=re.escape(f"checkpoint {missing} does not exist")):
        CoquiTts(missing, tiny[1]).synthesize(TEXT)
    missing = str(tmp_path / "nowhere.json")
    with pytest.raises(TtsError, match=re.escape(f"config file {missing} does not exist")):
        CoquiTts(tiny[0], missing).synthesize(TEXT)


def test_bad_checkpoint_names_the_model(tiny: tuple[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TtsError, match=re.escape(f"coqui model {bad}: cannot load it")):
        CoquiTts(str(bad), tiny[1]).synthesize(TEXT)


def test_missing_coqui_says_how_to_install(tiny: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "TTS.api", None)  # makes `from TTS.api import TTS` fail as if not installed
    monkeypatch.setattr(coqui_tts, "_models", {})  # and no model loaded by an earlier test
    with pytest.raises(TtsError, match=r"pip install coqui-tts") as err:
        CoquiTts(*tiny).synthesize(TEXT)
    assert tiny[0] in str(err.value)


def test_the_gateway_imports_neither_torch_nor_coqui_until_a_coqui_voice_loads() -> None:
    code = ("import sys, agents.speech.coqui_tts, agents.config, agents.engines, agents.scripted, agents.cascaded, "
            "telephony.app; print(sorted({'torch', 'TTS'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _scripted(agent: str) -> str:
    """A scripted agent's six lines from `name: voice`, its voice on the third."""
    name, voice = agent.split(": ", 1)
    return f"""\
  {name}:
    type: scripted
    voice: {voice}
    start: a
    nodes:
      a: [{{say: "Hello."}}]
"""


def test_a_voice_mapping_names_a_coqui_model(tiny_speakers: tuple[str, str]) -> None:
    model, config = tiny_speakers
    cfg = ScriptedAgentConfig.model_validate({"type": "scripted", "start": "a", "nodes": {"a": [{"say": "Hi."}]},
                                              "voice": {"engine": "coqui", "model_path": model, "speaker": "ana"}})
    engine = engine_for(cfg.voice)
    assert isinstance(engine, CoquiTts) and engine is engine_for(cfg.voice)
    assert (engine.model_path, engine.config_path, engine.speaker) == (model, config, "ana")  # config.json beside it
    assert rms_db(to_array(engine.synthesize(TEXT)[0])) > -40.0


def test_check_names_the_line_of_each_coqui_voice_at_fault(tiny: tuple[str, str], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    cfg = tmp_path / "vg.yaml"
    cfg.write_text("agents:\n" + "".join(_scripted(v) for v in [
        f"good: {{engine: coqui, model_path: {tiny[0]}}}",
        f"corrupt: {{engine: coqui, model_path: {bad}, config_path: {tiny[1]}}}",
        f"gone: {{engine: coqui, model_path: {tmp_path / 'nowhere.pth'}}}",
        f"typo: {{engine: coqui, model: {tiny[0]}}}",
        f"other: {{engine: piper, model_path: {tiny[0]}}}",
    ]) + "routes:\n  - match: '*'\n    agent: good\n")
    assert main(["check", str(cfg)]) == 1
    err = capsys.readouterr().err
    print(err)
    lines = err.splitlines()
    assert lines[0] == (f"{cfg}:16: agents.gone.scripted.voice: coqui model {tmp_path / 'nowhere.pth'}: checkpoint "
                        f"{tmp_path / 'nowhere.pth'} does not exist")
    assert lines[1].startswith(f"{cfg}:22: agents.typo.scripted.voice: unknown key 'model'")
    assert lines[2].startswith(f"{cfg}:28: agents.other.scripted.voice: a voice mapping needs engine: coqui")
    assert len(lines) == 4  # the file does not validate: no engine is loaded yet
    cfg.write_text("agents:\n" + "".join(_scripted(v) for v in [
        f"good: {{engine: coqui, model_path: {tiny[0]}}}",
        f"corrupt: {{engine: coqui, model_path: {bad}, config_path: {tiny[1]}}}",
    ]) + "routes:\n  - match: '*'\n    agent: good\n")
    assert main(["check", str(cfg)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"{cfg}:10: agents.corrupt.voice: coqui model {bad}: cannot load it"), lines
    assert lines[1:] == [f"{cfg}: 1 error(s)"]


def test_a_scripted_agent_whose_coqui_voice_does_not_load_fails_to_prepare_at_the_option(
        tiny_speakers: tuple[str, str]) -> None:
    """What `serve` turns into the file:line refusal (telephony.cli), as for piper."""
    cfg = ScriptedAgentConfig.model_validate({
        "type": "scripted", "start": "a", "nodes": {"a": [{"say": "Hi."}]},
        "voice": {"engine": "coqui", "model_path": tiny_speakers[0], "speaker": "zed"}})
    with pytest.raises(EngineLoadError) as e:
        asyncio.run(ScriptedFactory("desk", cfg, PromptCache()).prepare())
    assert e.value.loc == ("agents", "desk", "voice") and "no speaker 'zed'" in e.value.message
