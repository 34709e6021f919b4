"""The rule-based dialog: config validation, intent matching, slot filling, fallbacks and actions."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from agents.brain import DialogBrain, Part, Say, UserTurn
from agents.dialog import DEMO_YAML, CallAction, Dialog, DialogConfig, DtmfAction, Reply, ToolRequest, rank_intents
from agents.tools import CallTools, ToolConfig, ToolRunner
from telephony.config import ConfigError, validate_yaml

BOOKING_LINE = DEMO_YAML

RESTAURANT = """\
greeting: Hello.
fallback: Sorry?
max_fallbacks: 1
intents:
  table:
    examples: [book a table, reserve a table]
    slots:
      - name: people
        type: number
        prompt: How many people?
      - name: area
        type: choice
        prompt: Inside or on the terrace?
        values:
          inside: [indoors, in the restaurant]
          terrace: [outside, outdoors, garden]
      - name: phone
        type: digits
        min_digits: 6
        max_digits: 11
        prompt: What number can we call you on, {people} people?
      - name: name
        type: text
        prompt: And your name?
    reply: "A table for {people} on the {area}, {name}; we will call {phone_spoken}."
  menu:
    keywords: [menu]
    reply: One moment.
    action: {dtmf: "1#"}
"""


def _cfg(text: str = BOOKING_LINE) -> DialogConfig:
    return validate_yaml(text, "dialog.yaml", DialogConfig)


def _talk(d: Dialog, *turns: str) -> Reply:
    reply = d.start()
    for t in turns:
        reply = d.on_user(t, 0.0)
    return reply


def test_example_configs_are_valid() -> None:
    cfg = _cfg()
    assert list(cfg.intents) == ["booking", "hours", "person", "goodbye"]
    assert cfg.intents["booking"].slots[0].code_format is not None
    assert _cfg(RESTAURANT).intents["menu"].action == DtmfAction(dtmf="1#")


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("Booking {code_spoken} is", "Booking {ref} is", 19, "reply uses unknown {ref}"),
        ("format: LL DDDD", "format: '[A-Z'", 17, "not a valid regular expression"),
        ("type: alnum", "type: text", 15, "format is only for alnum slots"),
        ("type: alnum\n        format: LL DDDD", "type: choice", 15, "choice slots need values"),
        ('transfer: "sip:reception@pbx.example.com"\n  goodbye', 'transfer: "mailto:x"\n  goodbye', 37, "pattern"),
        ("examples: [goodbye,", "examplez: [goodbye,", 39, "Extra inputs are not permitted"),
        ("action: hangup", "action: hang up", 42, "'hangup'"),
        ("keywords: [bye]", "keywords: ['/(/']", 40, "bad regular expression"),
        ("max_fallbacks: 2", "max_fallbacks: -1", 3, "greater than or equal to 0"),
        ("name: code", "name: time", 15, "shadows a variable"),
        ('prompt: "Please', 'prompt: "{code} Please', 15, "slot 'code' prompt uses unknown {code}"),
        ("{topics}.", "{topic}.", 2, "fallback uses unknown {topic}; known: {topics}"),
        ('greeting: "Thanks', 'greeting: "{name} thanks', 1, "greeting uses unknown {name}; known: none"),
    ],
)
def test_config_errors_name_the_line(old: str, new: str, line: int, message: str) -> None:
    assert old in BOOKING_LINE
    with pytest.raises(ConfigError) as e:
        _cfg(BOOKING_LINE.replace(old, new, 1))
    assert any(i.line == line and message in i.message for i in e.value.issues), str(e.value)


def test_topics_need_titles() -> None:
    with pytest.raises(ConfigError, match="no intent has a title"):
        _cfg(re.sub(r"    title: .*\n", "", BOOKING_LINE))


def test_digit_bounds_only_on_digits_slots() -> None:
    with pytest.raises(ConfigError, match="only for digits slots"):
        _cfg(RESTAURANT.replace("type: text", "type: text\n        max_digits: 3"))


@pytest.mark.parametrize(
    ("said", "intent"),
    [
        ("What are your opening hours?", "hours"),
        ("When do you open tomorrow?", "hours"),
        ("what time do you close tonight", "hours"),
        ("are you open on sundays", "hours"),
        ("Hi, yeah, I was wondering if you could tell me your opening hours please.", "hours"),
        ("I'd like to check my booking.", "booking"),
        ("check my reservation", "booking"),
        ("I've got a reference number", "booking"),
        ("Can I speak to a real person?", "person"),
        ("operator please", "person"),
        ("put me through to someone", "person"),
        ("Bye.", "goodbye"),
        ("no thanks, that's all", "goodbye"),
        ("No, thank you.", "goodbye"),
        # mild ASR errors
        ("what are your opning ours", "hours"),
        ("chek my bookin", "booking"),
        ("can i speek to a persen", "person"),
        ("good bye", "goodbye"),
    ],
)
def test_intent_matching(said: str, intent: str) -> None:
    ranked = rank_intents(_cfg(), said)
    assert ranked[0][0] == intent, ranked
    assert ranked[0][1] >= 0.5 and ranked[0][1] - ranked[1][1] >= 0.1, ranked


@pytest.mark.parametrize("said", ["", "purple elephants", "hmm", "the weather is nice"])
def test_unrelated_text_scores_below_threshold(said: str) -> None:
    assert rank_intents(_cfg(), said)[0][1] < 0.5


def test_fallback_lists_topics() -> None:
    r = _talk(Dialog(_cfg()), "purple elephants")
    assert r.text == (
        "Sorry, I did not catch that. You can ask about checking a booking, opening hours or talking to a person."
    )
    assert r.action is None and not r.done and r.intent is None


def test_tie_asks_which_one() -> None:
    r = _talk(Dialog(_cfg()), "booking hours")
    assert r.text == "Sorry, did you mean checking a booking or opening hours?"
    assert r.intent is None


def test_hours_reply_uses_the_time() -> None:
    r = _talk(Dialog(_cfg()), "when are you open")
    assert r.intent == "hours" and not r.done and r.expect == "speech"
    assert re.fullmatch(r"Reception is open .* It is \d{1,2}:\d\d (AM|PM) now\.", r.text)


def test_booking_spelled_over_turns() -> None:
    d = Dialog(_cfg())
    assert d.start() == Reply("Thanks for calling Harbour Hotel. How can I help?")
    r = d.on_user("I'd like to check my booking", 0.0)
    assert r == Reply("Please spell your booking reference, for example A B 1 2 3 4.", intent="booking", expect="alnum")
    assert d.on_user("A B", 0.0).text == "A, B as in Bravo. Go on."
    r = d.on_user("one two three four", 0.0)
    assert r.text == "I have A, B as in Bravo. one, two, three, four. Is that right?" and r.expect == "alnum"
    r = d.on_user("yes", 0.0)
    assert r.text == "Thanks. Booking A, B as in Bravo. one, two, three, four is confirmed for tonight. Anything else?"
    assert r.slots == {"code": "AB1234"} and r.intent == "booking" and r.expect == "speech" and not r.done
    r = d.on_user("no thank you", 0.0)
    assert r.intent == "goodbye" and r.action == CallAction("hangup") and r.done and r.expect == "none"
    assert d.on_user("hello?", 0.0) == Reply("", expect="none", done=True)


def test_code_in_the_opening_sentence_goes_to_read_back() -> None:
    r = _talk(Dialog(_cfg()), "I want to check booking alpha bravo one two three four")
    assert r.text == "I have A, B as in Bravo. one, two, three, four. Is that right?"
    r = _talk(Dialog(_cfg()), "I want to check booking A B")  # not a whole code: ask for it
    assert r.text.startswith("Please spell your booking reference")


def test_spelling_denied_then_corrected() -> None:
    d = Dialog(_cfg())
    r = _talk(d, "check my booking", "C D 5 6 7 8", "no, it's C B 5 6 7 8", "correct")
    assert r.slots == {"code": "CB5678"}


def test_failed_spelling_counts_as_a_fallback() -> None:
    d = Dialog(_cfg())
    r = _talk(d, "check my booking", *["A B 1 2 3 4", "no"] * 3)
    assert r.text == "Sorry, I could not get the code. What else can I help you with?"
    assert r.intent is None and not r.done


def test_cancel_mid_slot() -> None:
    d = Dialog(_cfg())
    r = _talk(d, "check my booking", "A B", "never mind")
    assert r == Reply("Okay. What else can I help you with?")
    assert _talk(d, "what time do you close").intent == "hours"


def test_transfer_to_a_person() -> None:
    r = _talk(Dialog(_cfg()), "can I talk to someone please")
    assert r.text == "Putting you through to reception."
    assert r.action == CallAction("transfer", "sip:reception@pbx.example.com") and r.done and r.expect == "none"


def test_fallbacks_in_a_row_escalate() -> None:
    d = Dialog(_cfg())
    first, second, third = (d.on_user("purple elephants", 0.0) for _ in range(3))
    assert not first.done and not second.done and first.text.startswith("Sorry")
    assert third == Reply(
        "Let me put you through to someone who can help.",
        action=CallAction("transfer", "sip:reception@pbx.example.com"),
        expect="none",
        done=True,
    )


def test_a_success_resets_the_fallback_count() -> None:
    d = Dialog(_cfg())
    for said in ["purple", "elephants", "opening hours", "purple", "elephants"]:
        assert not d.on_user(said, 0.0).done


def test_escalation_hangs_up_by_default() -> None:
    d = Dialog(_cfg(RESTAURANT))
    d.on_user("blah", 0.0)
    assert d.on_user("blah", 0.0) == Reply("Goodbye.", action=CallAction("hangup"), expect="none", done=True)


def test_table_slots_over_turns_with_keys() -> None:
    d = Dialog(_cfg(RESTAURANT))
    r = _talk(d, "I'd like to book a table outside")
    assert r == Reply("How many people?", intent="table", slots={"area": "terrace"})
    r = d.on_user("for four please", 0.0)
    assert r == Reply(
        "What number can we call you on, 4 people?", intent="table", slots={"area": "terrace", "people": "4"},
        expect="digits",
    )  # fmt: skip
    assert [d.on_dtmf(k, 0.0).text for k in "0123999"] == [""] * 7
    assert d.on_dtmf("*", 0.0).text == "What number can we call you on, 4 people?"
    for k in "0123456":
        d.on_dtmf(k, 0.0)
    r = d.on_dtmf("#", 0.0)
    assert r.text == "And your name?" and r.slots["phone"] == "0123456" and r.expect == "speech"
    r = d.on_user("Ada Lovelace", 0.0)
    assert r.text == "A table for 4 on the terrace, Ada Lovelace; we will call zero, one, two. three, four, five, six."
    assert r.slots == {"people": "4", "area": "terrace", "phone": "0123456", "name": "Ada Lovelace"} and not r.done


def test_spoken_digits_and_max_digits_by_key() -> None:
    d = Dialog(_cfg(RESTAURANT))
    _talk(d, "reserve a table", "twenty two", "indoors")
    r = d.on_user("oh one two three four five six", 0.0)
    assert r.slots["phone"] == "0123456" and r.slots["area"] == "inside" and r.slots["people"] == "22"
    d = Dialog(_cfg(RESTAURANT))
    _talk(d, "reserve a table", "two", "garden")
    for k in "0123456789":
        assert d.on_dtmf(k, 0.0).text == ""
    assert d.on_dtmf("9", 0.0).slots["phone"] == "01234567899"


@pytest.mark.parametrize(
    ("turns", "retry"),
    [
        (["book a table", "lots"], "Sorry, I did not get that. How many people?"),
        (["book a table", "two", "on the roof"], "Sorry, I did not get that. Inside or on the terrace?"),
        (
            ["book a table", "two", "inside", "one two three"],
            "Sorry, I did not get that. What number can we call you on, 2 people?",
        ),
    ],
)  # fmt: skip
def test_unusable_slot_answers_retry_then_escalate(turns: list[str], retry: str) -> None:
    d = Dialog(_cfg(RESTAURANT))
    r = _talk(d, *turns)
    assert r.text == retry and not r.done
    assert _talk(d, turns[-1]).done


def test_short_keyed_digits_retry() -> None:
    d = Dialog(_cfg(RESTAURANT))
    _talk(d, "book a table", "two", "inside")
    d.on_dtmf("1", 0.0)
    assert d.on_dtmf("#", 0.0).text == "Sorry, I did not get that. What number can we call you on, 2 people?"


def test_dtmf_action_and_ignored_keys() -> None:
    d = Dialog(_cfg(RESTAURANT))
    assert d.on_dtmf("5", 0.0) == Reply("")
    r = d.on_user("can I hear the menu", 0.0)
    assert r == Reply("One moment.", action=CallAction("dtmf", "1#"), intent="menu")


def test_keypad_keys_reach_the_spelling() -> None:
    d = Dialog(_cfg(BOOKING_LINE.replace("format: LL DDDD", "format: DDDDDD")))
    r = _talk(d, "check my booking", "one", "that's it", "that's it", "that's it")
    assert r.expect == "keypad" and "keypad" in r.text
    for k in "12345":
        assert d.on_dtmf(k, 0.0) == Reply("", intent="booking", expect="keypad")
    r = d.on_dtmf("6", 0.0)
    assert r.slots == {"code": "123456"} and r.text.startswith("Thanks. Booking one, two, three. four, five, six")


NOW = 1_700_000_000.0


# -- an intent that calls a tool ---------------------------------------------------------------------------------
def _order_desk() -> DialogConfig:
    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "voicegate.yaml").read_text())
    return DialogConfig.model_validate(doc["agents"]["order_desk"]["dialog"])


def test_a_spelled_code_is_confirmed_then_looked_up_and_the_answer_fills_the_reply() -> None:
    d = Dialog(_order_desk())
    r = d.on_user("Where is my order? It is K L 4 7 2 9.", NOW)
    assert r.tool is None and "right" in r.text.lower() and r.expect == "alnum", r
    r = d.on_user("Yes.", NOW)
    assert r.text == "" and r.tool == ToolRequest("order_status", {"order_id": "KL4729"}), r
    r = d.on_tool_result(True, {"found": True, "order_id": "KL4729", "status": "out for delivery", "eta": "today"},
                         NOW)
    assert r.text == "Order K, L. four, seven, two, nine is out for delivery. Delivery: today. Anything else?", r
    assert r.tool is None and not r.done and r.intent == "status"
    r = d.on_user("Where is my order?", NOW)  # the dialog goes on: a second lookup
    d.on_user("A B 1 2 3 4", NOW)
    assert d.on_user("Yes", NOW).tool == ToolRequest("order_status", {"order_id": "AB1234"})
    r = d.on_tool_result(True, {"found": False, "order_id": "AB1234"}, NOW)
    assert r.text == "I could not find order A, B as in Bravo. one, two, three, four. Anything else?", r
    d.on_user("Check my order K L 4 7 2 9", NOW)
    d.on_user("Yes", NOW)
    r = d.on_tool_result(False, None, NOW)
    assert r.text == "Sorry, I could not look that up right now. Please try again later.", r


@pytest.mark.parametrize(("change", "message"), [
    ({"tool": None}, "reply uses {result_eta}, and the intent has no tool to answer it"),
    ({"tool": None, "reply": "Done."}, "args, not_found and on_error are for an intent with a tool"),
    ({"args": {"order_id": "{nope}"}}, "args.order_id uses unknown {nope}"),
    ({"reply": "It is {status}."}, "reply uses unknown {status}"),
    ({"action": {"transfer": "sip:a@b"}}, "an intent with a tool may end with hangup"),
])
def test_bad_tool_intents_are_named(change: dict[str, Any], message: str) -> None:
    doc = _order_desk().model_dump(exclude_unset=True)
    doc["intents"]["status"].update(change)
    with pytest.raises(ValidationError, match=re.escape(message)):
        DialogConfig.model_validate(doc)


def test_the_dialog_brain_runs_the_tool_against_the_example_service() -> None:
    from examples.order_status.server import make_server
    from tests.unit.test_brain_tools import Call

    server = make_server(0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    call = Call()

    async def go() -> list[list[Part]]:
        doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "voicegate.yaml").read_text())
        tool = ToolConfig.model_validate(doc["tools"]["order_status"])
        url = f"http://127.0.0.1:{server.server_address[1]}/orders/{{order_id}}"
        tool = tool.model_copy(update={"http": tool.http.model_copy(update={"url": url})} if tool.http else {})
        runner = ToolRunner({"order_status": tool}, ["order_status"])
        brain = DialogBrain(Dialog(_order_desk()))
        brain.tools = CallTools(runner, call)
        try:
            return [[p async for p in brain.respond(UserTurn(text, "en", 0.9))]
                    for text in ("Where is my order? K L 4 7 2 9", "Yes.")]
        finally:
            await runner.aclose()

    try:
        _, answer = asyncio.run(go())
    finally:
        server.shutdown()
        server.server_close()
    assert all(isinstance(p, Say) for p in answer)
    assert " ".join(p.text for p in answer if isinstance(p, Say)) == (
        "Order K, L. four, seven, two, nine is out for delivery. Delivery: today. Anything else?")
    [record] = [t for t in call.turns if t.get("tool")]
    assert record["arguments"] == {"order_id": "KL4729"} and record["ok"], record
