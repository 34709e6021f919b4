"""The embedded rule-based dialog: the default brain of the voice agent when no LLM is configured.

A YAML config lists intents; each has example phrases, keywords (a word, a phrase, or a regular expression in
slashes matched against the normalised text), slots to fill in order, a reply template and an optional action
(`hangup`, `{transfer: sip:...}`, `{dtmf: "123"}`); `DEMO_YAML` is a worked example. `Dialog` is pure: the agent
feeds it transcripts and keys with the current time, speaks each `Reply` and carries out its `CallAction`.

Scoring (`rank_intents`): text is lower-cased and stripped of punctuation; common function words are ignored.
An example scores the F2 of its token overlap with the utterance (recall weighted: a long, rambling sentence that
contains the example still scores high); tokens match when equal, equal after stripping -s/-es/-ed/-ing, or one
edit apart (an insertion or deletion, or a substitution in words of five letters or more), which absorbs mild ASR
errors ("opning", "bookin", "ours"). An intent scores its best example plus 0.5 per matching keyword (at most 1.0).
The best intent at or above `threshold` wins; a runner-up also above it and within `margin` asks which one was meant.

Slots: `alnum` runs an `agents.alnum.SpellingSession` (read-back and confirm; a code spelled in the opening
sentence is taken when it fits the slot's format), `digits` accepts speech or keys (`#` ends, `*` clears),
`number` a quantity, `choice` one of its values or synonyms (also taken from the opening sentence), `text` anything.
Templates may use earlier slots, `{<slot>_spoken}` (the read-back of an alnum or digits slot) and `{time}`.
An intent with a `tool` (agents.tools) has it called with `args` once its slots are filled: the `Reply` carries the
`ToolRequest`, the agent runs it and hands the answer to `on_tool_result`, whose reply may use `{result_<field>}` for
each top-level field of the answer (`not_found` when a field it uses is missing, `on_error` when the tool failed).
Misses in a row (no intent, a tie, an unusable slot answer, a failed spelling) get the fallback, the clarifying
question or the slot's retry prompt; after `max_fallbacks` of them the next miss ends the dialog with
`on_max_fallbacks`. "Cancel" or "never mind" abandons the slots being filled.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from agents.alnum import CodeFormat, Done, Failed, SpellingEvent, SpellingSession, normalise, read_back
from agents.patterns import TextOrRegex, is_regex


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransferAction(_Strict):
    transfer: str = Field(pattern=r"^(sips?|tel):\S+$")
    """SIP (or tel) URI to transfer the caller to."""


class DtmfAction(_Strict):
    dtmf: str = Field(pattern=r"^[0-9A-D*#]+$")
    """Keys to send to the far end (an IVR behind the gateway)."""


Action = Literal["hangup"] | TransferAction | DtmfAction


@dataclass(frozen=True)
class CallAction:
    """What the call should do after the reply is spoken: `transfer` to `arg`, `hangup`, or send `dtmf` keys `arg`."""

    kind: Literal["transfer", "hangup", "dtmf"]
    arg: str = ""

    @classmethod
    def of(cls, action: Action) -> CallAction:
        if isinstance(action, TransferAction):
            return cls("transfer", action.transfer)
        if isinstance(action, DtmfAction):
            return cls("dtmf", action.dtmf)
        return cls("hangup")

    @property
    def ends_call(self) -> bool:
        return self.kind != "dtmf"


BUILTINS = frozenset({"time"})


def _fields(text: str) -> set[str]:
    """The names a format template uses (`{code}`, `{code_spoken}`); '' for a positional `{}`."""
    return {re.split(r"[.\[]", name)[0] for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def _check_template(text: str, known: Iterable[str], what: str) -> None:
    try:
        unknown = sorted(_fields(text) - set(known))
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    if unknown:
        names = ", ".join(f"{{{n}}}" for n in sorted(known)) or "none"
        raise ValueError(f"{what} uses unknown {{{unknown[0]}}}; known: {names}")


class SlotConfig(_Strict):
    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    type: Literal["digits", "number", "alnum", "choice", "text"]
    prompt: str
    retry: str | None = None
    """Said when the answer is unusable; default: "Sorry, I did not get that." and the prompt."""
    format: str | None = None
    """alnum only: an `agents.alnum.CodeFormat` pattern (`LLDDDD`, `LL DDDD` or a regular expression)."""
    values: dict[str, list[str]] = {}
    """choice only: each value with its synonyms."""
    min_digits: int = Field(1, ge=1, le=32)
    max_digits: int = Field(16, ge=1, le=32)

    @field_validator("format")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        if v is not None:
            CodeFormat(v)
        return v

    @model_validator(mode="after")
    def _by_type(self) -> SlotConfig:
        if self.format is not None and self.type != "alnum":
            raise ValueError("format is only for alnum slots")
        if (self.type == "choice") != bool(self.values):
            raise ValueError("choice slots need values, and only they take values")
        if self.type != "digits" and {"min_digits", "max_digits"} & self.model_fields_set:
            raise ValueError("min_digits and max_digits are only for digits slots")
        if self.min_digits > self.max_digits:
            raise ValueError("min_digits is above max_digits")
        return self

    @property
    def code_format(self) -> CodeFormat | None:
        return CodeFormat(self.format) if self.format is not None else None

    @property
    def variables(self) -> tuple[str, ...]:
        """The template variables this slot provides once filled."""
        return (self.name, f"{self.name}_spoken") if self.type in ("alnum", "digits") else (self.name,)


class IntentConfig(_Strict):
    title: str | None = None
    """How the fallback and the clarifying question name it ("checking a booking"); untitled intents are not listed
    in the fallback's `{topics}`."""
    examples: list[str] = []
    keywords: list[TextOrRegex] = []
    """Words or phrases (their words present in any order, function words aside), or `/regular expressions/`."""
    slots: list[SlotConfig] = []
    reply: str
    action: Action | None = None
    tool: str | None = None
    """A business tool of the top-level `tools`, called once the slots are filled; `reply` may then use
    `{result_<field>}` for each top-level field of its answer."""
    args: dict[str, Any] = {}
    """The tool's arguments; strings have the slots (`{code}`) filled in."""
    not_found: str | None = None
    """Said instead of `reply` when the answer lacks a `{result_...}` field it uses (an unknown order); default:
    "Sorry, I could not find that." """
    on_error: str | None = None
    """Said when the tool fails; default: the tool's apology."""

    @field_validator("slots")
    @classmethod
    def _slots(cls, v: list[SlotConfig]) -> list[SlotConfig]:
        known = set(BUILTINS)
        for slot in v:
            if slot.name in known:
                raise ValueError(f"slot {slot.name!r} is defined twice or shadows a variable")
            _check_template(slot.prompt, known, f"slot {slot.name!r} prompt")
            _check_template(slot.retry or "", known, f"slot {slot.name!r} retry")
            known.update(slot.variables)
        return v

    @model_validator(mode="after")
    def _matchable(self) -> IntentConfig:
        if not self.examples and not self.keywords:
            raise ValueError("an intent needs examples or keywords")
        return self

    @field_validator("reply")
    @classmethod
    def _reply(cls, v: str, info: ValidationInfo) -> str:
        if "slots" in info.data:  # else the slots' own errors are reported
            results = {f for f in _fields(v) if f.startswith("result_")}  # a tool's answer: checked below
            _check_template(v, BUILTINS.union(results, *(s.variables for s in info.data["slots"])), "reply")
        return v

    @model_validator(mode="after")
    def _tool(self) -> IntentConfig:
        known = BUILTINS.union(*(s.variables for s in self.slots))
        if not self.tool and (used := sorted(f for f in _fields(self.reply) if f.startswith("result_"))):
            raise ValueError(f"reply uses {{{used[0]}}}, and the intent has no tool to answer it")
        for name, text in (("not_found", self.not_found), ("on_error", self.on_error)):
            _check_template(text or "", known, name)
        for key, value in self.args.items():
            if isinstance(value, str):
                _check_template(value, known, f"args.{key}")
        if not self.tool and (self.args or self.not_found or self.on_error):
            raise ValueError("args, not_found and on_error are for an intent with a tool")
        if self.tool and self.action is not None and self.action != "hangup":
            raise ValueError("an intent with a tool may end with hangup, not another action")
        return self


class DialogConfig(_Strict):
    greeting: str
    fallback: str = "Sorry, I did not catch that. You can ask about {topics}."
    clarify: str = "Sorry, did you mean {options}?"
    anything_else: str = "What else can I help you with?"
    """Said after a cancelled or failed slot ("Okay." goes before it when the caller cancels)."""
    goodbye: str = "Goodbye."
    handoff: str = "Let me put you through to someone who can help."
    max_fallbacks: int = Field(2, ge=0, le=10)
    on_max_fallbacks: Literal["hangup"] | TransferAction = "hangup"
    """Said with `handoff` (transfer) or `goodbye` (hangup)."""
    threshold: float = Field(0.5, gt=0, le=2)
    margin: float = Field(0.1, ge=0, le=1)
    intents: dict[str, IntentConfig] = Field(min_length=1)

    @field_validator("greeting", "fallback", "clarify", "anything_else", "goodbye", "handoff")
    @classmethod
    def _templates(cls, v: str, info: ValidationInfo) -> str:
        known = {"fallback": ("topics",), "clarify": ("options",)}.get(info.field_name or "", ())
        _check_template(v, known, info.field_name or "text")
        return v

    @model_validator(mode="after")
    def _topics(self) -> DialogConfig:
        if "topics" in _fields(self.fallback) and not any(i.title for i in self.intents.values()):
            raise ValueError("fallback uses {topics} but no intent has a title")
        return self


DEMO_YAML = """\
greeting: "Thanks for calling Harbour Hotel. How can I help?"
fallback: "Sorry, I did not catch that. You can ask about {topics}."
max_fallbacks: 2
on_max_fallbacks:
  transfer: "sip:reception@pbx.example.com"
intents:
  booking:
    title: checking a booking
    examples:
      - check my booking
      - I have a booking reference
      - what is the status of my reservation
    keywords: [booking, reservation, '/\\bref(erence)?\\b/']
    slots:
      - name: code
        type: alnum
        format: LL DDDD
        prompt: "Please spell your booking reference, for example A B 1 2 3 4."
    reply: "Thanks. Booking {code_spoken} is confirmed for tonight. Anything else?"
  hours:
    title: opening hours
    examples:
      - what are your opening hours
      - when are you open
      - what time do you close
    keywords: [hours, open, close]
    reply: "Reception is open from 7 in the morning to 11 at night. It is {time} now."
  person:
    title: talking to a person
    examples:
      - can I talk to a person
      - I want to speak to someone
      - put me through to reception
    keywords: [person, human, someone, operator, reception, representative]
    reply: "Putting you through to reception."
    action:
      transfer: "sip:reception@pbx.example.com"
  goodbye:
    examples: [goodbye, "no thank you", "no thanks that's all", nothing else]
    keywords: [bye]
    reply: "Thanks for calling. Goodbye!"
    action: hangup
"""
"""The example: a small hotel booking line (check a booking by code, opening hours, a person, goodbye)."""

DEMO_DIALOG = DialogConfig.model_validate(yaml.safe_load(DEMO_YAML))


_STOP = frozenset({
    "a", "an", "the", "i", "im", "id", "ive", "me", "my", "you", "your", "youre", "we", "our", "to", "of", "for",
    "and", "or", "is", "are", "am", "be", "it", "its", "this", "that", "thats", "can", "could", "would", "will",
    "do", "does", "did", "please", "want", "wanna", "like", "need", "just", "so", "um", "uh", "er", "hi", "hey",
    "ok", "okay", "well", "yeah", "in", "on", "at", "with", "about", "get", "what", "when", "how", "where", "there",
})  # fmt: skip
"""Function words left out of example overlap (kept when an example or utterance has nothing else)."""


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace("'", ""))


def _content(tokens: list[str]) -> list[str]:
    return [t for t in tokens if t not in _STOP] or tokens


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _one_edit(a: str, b: str) -> bool:
    if len(a) == len(b):
        return len(a) >= 5 and sum(x != y for x, y in zip(a, b, strict=True)) == 1
    if len(a) > len(b):
        a, b = b, a
    return len(b) - len(a) == 1 and len(a) >= 3 and any(b[:k] + b[k + 1 :] == a for k in range(len(b)))


def _same(a: str, b: str) -> bool:
    """Token match that tolerates inflection and one ASR slip."""
    return a == b or _stem(a) == _stem(b) or _one_edit(a, b) or _one_edit(_stem(a), _stem(b))


def _contains(content: list[str], phrase: str) -> bool:
    """All the phrase's content words appear (fuzzily), in any order."""
    words = _content(_tokens(phrase))
    return bool(words) and all(any(_same(w, t) for t in content) for w in words)


def _overlap(example: list[str], content: list[str]) -> float:
    hits = sum(any(_same(w, t) for t in content) for w in example)
    if not hits:
        return 0.0
    recall = hits / len(example)
    precision = sum(any(_same(t, w) for w in example) for t in content) / len(content)
    return 5 * precision * recall / (4 * precision + recall)


def _score(intent: IntentConfig, tokens: list[str]) -> float:
    content = _content(tokens)
    said = " ".join(tokens)
    best = max((_overlap(_content(_tokens(ex)), content) for ex in intent.examples if _tokens(ex)), default=0.0)
    hits = sum(re.search(k[1:-1], said) is not None if is_regex(k) else _contains(content, k) for k in intent.keywords)
    return best + min(1.0, 0.5 * hits)


def score(intent: IntentConfig, text: str) -> float:
    """How well `text` matches one intent (the score `rank_intents` ranks by)."""
    return _score(intent, _tokens(text))


def rank_intents(cfg: DialogConfig, text: str) -> list[tuple[str, float]]:
    """Every intent with its score, best first (config order among equals)."""
    tokens = _tokens(text)
    if not tokens:
        return [(name, 0.0) for name in cfg.intents]
    return sorted(((name, _score(i, tokens)) for name, i in cfg.intents.items()), key=lambda s: -s[1])


Expect = Literal["speech", "alnum", "digits", "keypad", "none"]
"""What the next input should be: free speech, a spelled code (wait longer between words; keys too), digits (speech
or keys), keys only, or nothing (the dialog is over)."""


@dataclass(frozen=True)
class ToolRequest:
    """A tool call the agent makes for the dialog; its answer goes to `Dialog.on_tool_result`."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    text: str
    """What to say; '' when there is nothing to say (a key was collected)."""
    action: CallAction | None = None
    intent: str | None = None
    """The intent being served or just completed."""
    slots: Mapping[str, str] = field(default_factory=dict)
    expect: Expect = "speech"
    done: bool = False
    """The call is over for the dialog (after saying `text`, hang up or transfer as `action` says)."""
    tool: ToolRequest | None = None
    """Call this tool after saying `text`, and give its answer to `Dialog.on_tool_result`."""


_CANCEL = re.compile(r"\b(cancel|never ?mind|forget (it|that))\b")


def _join_or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _clock(now: float) -> str:
    t = time.localtime(now)
    return f"{t.tm_hour % 12 or 12}:{t.tm_min:02d} {'AM' if t.tm_hour < 12 else 'PM'}"


def _choose(slot: SlotConfig, text: str) -> str | None:
    content = _content(_tokens(text))
    hits = [v for v, synonyms in slot.values.items() if any(_contains(content, p) for p in (v, *synonyms))]
    return hits[0] if len(hits) == 1 else None


def _spoken(value: Any) -> str:
    """A JSON value as it is said in a reply: `true`/`false` for booleans (so a branch can name them), text as is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _digits(text: str) -> str:
    return "".join(c for c in normalise(text).replace("O", "0") if c.isdigit())


def _slot_value(slot: SlotConfig, text: str) -> str | None:
    """The value of a spoken answer to a digits, number, choice or text slot, or None when it is unusable."""
    if slot.type == "digits":
        digits = _digits(text)
        return digits if slot.min_digits <= len(digits) <= slot.max_digits else None
    if slot.type == "number":
        digits = _digits(re.sub(r"(?i)\bfor\b", " ", text))  # "a table for two"
        return str(int(digits)) if digits else None
    if slot.type == "choice":
        return _choose(slot, text)
    return text.strip() or None


class Dialog:
    """One call's conversation (sans-IO). `now` is wall-clock time (`time.time()`, read when None), for `{time}`."""

    def __init__(self, cfg: DialogConfig) -> None:
        self.cfg = cfg
        self._intent: str | None = None
        self._slots: dict[str, str] = {}
        self._spelling: SpellingSession | None = None
        self._keys = ""
        self._fallbacks = 0
        self._done = False
        self._asked: tuple[str, dict[str, str]] | None = None
        """The intent and slots whose tool call is out."""

    def start(self) -> Reply:
        return Reply(self.cfg.greeting)

    @property
    def fallbacks(self) -> int:
        """Misses in a row so far (reset by any understood turn)."""
        return self._fallbacks

    def on_user(self, text: str, now: float | None = None) -> Reply:
        """The reply to one finished caller turn."""
        now = time.time() if now is None else now
        if self._done:
            return Reply("", expect="none", done=True)
        slot = self._slot()
        if slot is None:
            return self._match(text, now)
        if _CANCEL.search(" ".join(_tokens(text))):
            self._reset()
            return self._reply(f"Okay. {self.cfg.anything_else}")
        if self._spelling is not None:
            return self._spelled(self._spelling.feed_transcript(text), now)
        return self._answer(slot, _slot_value(slot, text), now)

    def on_dtmf(self, digit: str, now: float | None = None) -> Reply:
        """The reply to one key; keys count only for alnum and digits slots."""
        now = time.time() if now is None else now
        if self._done:
            return Reply("", expect="none", done=True)
        slot = self._slot()
        if self._spelling is not None:
            event = self._spelling.feed_dtmf(digit)
            return self._reply("") if event is None else self._spelled(event, now)
        if slot is None or slot.type != "digits":
            return self._reply("")
        if digit == "*":
            self._keys = ""
            return self._reply(self._render(slot.prompt, now))
        if digit.isdigit():
            self._keys += digit
        if digit == "#" or len(self._keys) >= slot.max_digits:
            keys, self._keys = self._keys, ""
            return self._answer(slot, keys if slot.min_digits <= len(keys) <= slot.max_digits else None, now)
        return self._reply("")

    def _slot(self) -> SlotConfig | None:
        if self._intent is None:
            return None
        return next((s for s in self.cfg.intents[self._intent].slots if s.name not in self._slots), None)

    def _expect(self) -> Expect:
        slot = self._slot()
        if slot is None or slot.type not in ("alnum", "digits"):
            return "speech"
        if self._spelling is not None and self._spelling.on_keypad:
            return "keypad"
        return slot.type

    def _reply(self, text: str) -> Reply:
        return Reply(text, intent=self._intent, slots=dict(self._slots), expect=self._expect())

    def _reset(self) -> None:
        self._intent, self._slots, self._spelling, self._keys = None, {}, None, ""

    def _match(self, text: str, now: float) -> Reply:
        ranked = rank_intents(self.cfg, text)
        best, top = ranked[0]
        runner, second = ranked[1] if len(ranked) > 1 else ("", 0.0)
        if top < self.cfg.threshold:
            topics = [i.title for i in self.cfg.intents.values() if i.title]
            return self._fallback(self.cfg.fallback.format(topics=_join_or(topics) if topics else ""))
        if second >= self.cfg.threshold and top - second < self.cfg.margin:
            options = [self.cfg.intents[n].title or n.replace("_", " ") for n in (best, runner)]
            return self._fallback(self.cfg.clarify.format(options=_join_or(options)))
        self._fallbacks = 0
        self._intent = best
        for slot in self.cfg.intents[best].slots:
            value = _choose(slot, text) if slot.type == "choice" else None
            if value is not None:
                self._slots[slot.name] = value
        return self._next(now, text)

    def _next(self, now: float, opening: str | None = None) -> Reply:
        """Ask for the next empty slot, or complete the intent; `opening` may already hold a spelled code."""
        slot = self._slot()
        if slot is None:
            return self._complete(now)
        prompt = self._render(slot.prompt, now)
        if slot.type == "alnum":
            fmt = slot.code_format
            self._spelling = SpellingSession(prompt, fmt)
            if opening is not None and fmt is not None and fmt.fix(normalise(opening)):
                return self._spelled(self._spelling.feed_transcript(opening), now)
            return self._reply(self._spelling.start().text)
        return self._reply(prompt)

    def _spelled(self, event: SpellingEvent, now: float) -> Reply:
        slot = self._slot()
        assert slot is not None
        if isinstance(event, Done):
            self._spelling = None
            return self._answer(slot, event.code, now)
        if isinstance(event, Failed):
            self._reset()
            return self._fallback(f"{event.text} {self.cfg.anything_else}")
        return self._reply(event.text)

    def _answer(self, slot: SlotConfig, value: str | None, now: float) -> Reply:
        if value is None:
            return self._fallback(self._render(slot.retry or f"Sorry, I did not get that. {slot.prompt}", now))
        self._fallbacks = 0
        self._slots[slot.name] = value
        return self._next(now)

    def _fallback(self, text: str) -> Reply:
        self._fallbacks += 1
        if self._fallbacks <= self.cfg.max_fallbacks:
            return self._reply(text)
        self._reset()
        self._done = True
        action = CallAction.of(self.cfg.on_max_fallbacks)
        say = self.cfg.handoff if action.kind == "transfer" else self.cfg.goodbye
        return Reply(say, action=action, expect="none", done=True)

    def on_tool_result(self, ok: bool, data: Any, now: float | None = None) -> Reply:
        """The reply once the tool of the last `Reply` answered: `ok` and its JSON answer. `text` '' on a failure
        without `on_error`: the agent says the tool's apology."""
        now = time.time() if now is None else now
        assert self._asked is not None, "on_tool_result without a tool request"
        name, slots = self._asked
        self._asked = None
        self._intent, self._slots = name, slots
        intent = self.cfg.intents[name]
        if not ok:
            text = self._render(intent.on_error, now) if intent.on_error else ""
        else:
            fields = data if isinstance(data, dict) else {"value": data}
            results = {f"result_{k}": _spoken(v) for k, v in fields.items()}
            try:
                text = self._render(intent.reply, now, results)
            except KeyError:
                text = self._render(intent.not_found or "Sorry, I could not find that.", now)
        return self._finish(name, intent, text, slots)

    def _complete(self, now: float) -> Reply:
        assert self._intent is not None
        name, intent = self._intent, self.cfg.intents[self._intent]
        slots = dict(self._slots)
        if intent.tool is not None:
            args = {k: self._render(v, now) if isinstance(v, str) else v for k, v in intent.args.items()}
            self._asked = (name, slots)
            self._reset()
            return Reply("", intent=name, slots=slots, expect="none", tool=ToolRequest(intent.tool, args))
        return self._finish(name, intent, self._render(intent.reply, now), slots)

    def _finish(self, name: str, intent: IntentConfig, text: str, slots: dict[str, str]) -> Reply:
        self._reset()
        action = CallAction.of(intent.action) if intent.action is not None else None
        self._done = action is not None and action.ends_call
        expect: Expect = "none" if self._done else "speech"
        return Reply(text, action=action, intent=name, slots=slots, expect=expect, done=self._done)

    def _render(self, template: str, now: float, extra: Mapping[str, str] | None = None) -> str:
        variables = {"time": _clock(now), **self._slots, **(extra or {})}
        if self._intent is not None:
            for slot in self.cfg.intents[self._intent].slots:
                if slot.name in self._slots and slot.type in ("alnum", "digits"):
                    groups = slot.code_format.groups if slot.code_format else None
                    variables[f"{slot.name}_spoken"] = read_back(self._slots[slot.name], groups or None)
        return template.format_map(variables)
