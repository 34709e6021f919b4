"""The hybrid router: calm routine turns stay on the cascade; asking for a person, an angry voice (relative to the
caller's own start of the call), a language switch, repeated misunderstandings and VIP callers go to S2S; a budget
holds the call on the cascade."""

from __future__ import annotations

import functools
import subprocess

import numpy as np
import pytest

from agents.brain import UserTurn
from agents.dialog import DEMO_DIALOG, Dialog
from agents.router import Budget, Escalate, EscalateWhen, Router, Stay, caller_matches
from media.paralinguistics import Prosody, analyse_pcm
from media.resample import resample

CALM = ["What time does the restaurant open tonight", "I would like to check my booking please",
        "Can you tell me where the car park is", "Is breakfast included with the room"]


@functools.cache
def espeak(text: str, pitch: int = 50, amplitude: int = 100, speed: int = 175, gain_db: float = 0.0) -> Prosody:
    """Prosody of espeak-ng speech (`-p` pitch, `-a` amplitude, `-s` words a minute), then `gain_db` of line gain."""
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "-p", str(pitch), "-a", str(amplitude), "-s", str(speed),
                          "--stdout", text], capture_output=True, check=True).stdout
    pcm = resample(wav[44:], 22050)
    x = np.frombuffer(pcm, "<i2").astype(np.float64) * 10 ** (gain_db / 20)
    return analyse_pcm(np.clip(x, -32768, 32767).astype("<i2").tobytes())


def said(text: str, prosody: Prosody | None = None, language: str = "en", confidence: float = 0.9) -> UserTurn:
    return UserTurn(text, language, confidence, prosody)


def calm(i: int, gain_db: float = 0.0) -> UserTurn:
    return said(CALM[i], espeak(CALM[i], gain_db=gain_db))


def feed(router: Router, turns: list[UserTurn], t0: float = 0.0) -> list[Stay | Escalate]:
    return [router.turn(t, 0, t0 + 10.0 * i) for i, t in enumerate(turns)]


def test_calm_routine_turns_stay_on_the_cascade() -> None:
    router = Router(EscalateWhen())
    assert router.start("<sip:alice@example.com>", 0.0) == Stay()
    assert feed(router, [calm(i) for i in range(4)]) == [Stay()] * 4
    assert router.arousal_z is not None and abs(router.arousal_z) < 1.0, router.arousal_z  # judged, and calm


@pytest.mark.parametrize("text", ["Let me speak to someone.", "I want to speak to someone about a complaint.",
                                  "Can I talk to a real person please", "This is unacceptable."])
def test_asking_for_a_person_or_complaining_escalates(text: str) -> None:
    router = Router(EscalateWhen())
    router.start("<sip:alice@example.com>", 0.0)
    [first, second] = feed(router, [calm(0), said(text)])
    assert first == Stay()
    assert isinstance(second, Escalate) and second.reason == "phrase", second


@pytest.mark.parametrize("text", ["Someone booked a room for me last week", "What time do you close",
                                  "I would like to speak about my booking", "My manager booked the room"])
def test_everyday_sentences_with_similar_words_stay(text: str) -> None:
    router = Router(EscalateWhen())
    assert feed(router, [said(text)]) == [Stay()]


@pytest.mark.parametrize("gain_db", [0.0, 8.0])
def test_an_angry_caller_escalates_relative_to_their_own_baseline(gain_db: float) -> None:
    """Raised pitch, energy and rate against the caller's first two turns escalate; a livelier but not angry turn
    does not. The same holds on a line 8 dB hotter, where absolute loudness would read every turn as aroused."""
    router = Router(EscalateWhen())
    router.start("<sip:alice@example.com>", 0.0)
    lively = said(CALM[2], espeak(CALM[2], pitch=60, amplitude=120, speed=190, gain_db=gain_db))
    angry = said(CALM[3], espeak(CALM[3], pitch=85, amplitude=190, speed=230, gain_db=gain_db))
    decisions = feed(router, [calm(0, gain_db), calm(1, gain_db), lively, angry])
    assert decisions[:3] == [Stay()] * 3, decisions
    assert isinstance(decisions[3], Escalate) and decisions[3].reason == "arousal", decisions[3]
    assert router.arousal_z is not None and router.arousal_z >= 2.0


def test_arousal_is_not_judged_before_the_baseline_or_on_short_turns() -> None:
    router = Router(EscalateWhen(baseline_turns=2))
    angry = espeak(CALM[3], pitch=85, amplitude=190, speed=230)
    assert feed(router, [said(CALM[3], angry), said("yes", espeak("yes", pitch=90, amplitude=200))]) == [Stay()] * 2
    assert router.arousal_z is None


def test_a_language_switch_escalates() -> None:
    router = Router(EscalateWhen())
    d = feed(router, [said("hello", language="en"), said("booking please", language="en-US"),
                      said("मुझे मदद चाहिए", language="hi")])
    assert d[:2] == [Stay()] * 2
    assert isinstance(d[2], Escalate) and d[2].reason == "language" and d[2].detail == "en -> hi"


def test_repeated_misunderstanding_escalates_the_next_turn() -> None:
    dialog = Dialog(DEMO_DIALOG)
    router = Router(EscalateWhen(fallbacks=2), dialog=DEMO_DIALOG)
    decisions = []
    for i, text in enumerate(["purple monkey dishwasher", "flibber flabber", "wobble gobble"]):
        decisions.append(router.turn(said(text), dialog.fallbacks, float(i)))
        dialog.on_user(text, 0.0)
    assert decisions[:2] == [Stay()] * 2
    assert isinstance(decisions[2], Escalate) and decisions[2].reason == "fallbacks", decisions[2]


def test_an_intent_of_the_cascade_dialog_can_escalate() -> None:
    router = Router(EscalateWhen(phrases=None, intents=["person"]), dialog=DEMO_DIALOG)
    d = feed(router, [said("what are your opening hours"), said("can I talk to a person")])
    assert d[0] == Stay() and isinstance(d[1], Escalate) and d[1].reason == "intent", d


def test_low_asr_confidence_escalates_after_turns_in_a_row() -> None:
    router = Router(EscalateWhen(asr_confidence_below=0.45, low_confidence_turns=2))
    d = feed(router, [said("uh the thing", confidence=0.3), said("booking", confidence=0.9),
                      said("mumble", confidence=0.2), said("grumble", confidence=0.4)])
    assert d[:3] == [Stay()] * 3
    assert isinstance(d[3], Escalate) and d[3].reason == "low_confidence", d


@pytest.mark.parametrize(("caller", "vip"), [
    ('"Boss" <sip:+4930123456@pbx.example.com>', True),
    ("<sip:+4940123456@pbx.example.com>", False),
    ("<sip:ceo@corp.example.com;transport=tcp>", True),
    ("<sip:alice@corp.example.com>", False),
])
def test_vip_callers_escalate_at_once(caller: str, vip: bool) -> None:
    router = Router(EscalateWhen(vip_callers=["+4930*", "/^<sip:ceo@/"]))
    d = router.start(caller, 0.0)
    assert isinstance(d, Escalate) == vip and (not vip or (isinstance(d, Escalate) and d.reason == "vip")), d


def test_caller_patterns() -> None:
    assert caller_matches("alice", "<sip:alice@example.com>") and not caller_matches("alice", "<sip:alicia@x>")
    assert caller_matches("+44*", "tel:+441234") and caller_matches("/example\\.com>$/", "<sip:bob@example.com>")


def test_a_budget_blocks_escalation_late_in_a_long_call() -> None:
    """$0.30 a minute, $0.50 cap: half a minute in, a request escalates (1 minute assumed, $0.30); five minutes
    in, the rest of the call is expected to last five more ($1.50) and the call stays on the cascade."""
    budget = Budget(max_usd=0.5, usd_per_min=0.3)
    early = Router(EscalateWhen(), budget)
    early.start("<sip:alice@example.com>", 100.0)
    d = early.turn(said("let me speak to someone"), 0, 130.0)
    assert isinstance(d, Escalate) and d.usd_estimate == pytest.approx(0.3)
    late = Router(EscalateWhen(), budget)
    late.start("<sip:alice@example.com>", 100.0)
    d = late.turn(said("let me speak to someone"), 0, 400.0)
    assert isinstance(d, Stay) and d.blocked.startswith("phrase: S2S estimate $1.50"), d
    assert late.escalated is None
    vip = Router(EscalateWhen(vip_callers=["alice"]), Budget(max_usd=0.2, usd_per_min=0.3))
    assert vip.start("<sip:alice@example.com>", 0.0) == Stay(blocked="vip: S2S estimate $0.30 over the $0.20 cap")


def test_escalation_is_one_way() -> None:
    router = Router(EscalateWhen())
    first = router.turn(said("I want to make a complaint"), 0, 0.0)
    assert isinstance(first, Escalate)
    assert router.turn(calm(0), 0, 1.0) is first
