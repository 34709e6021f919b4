"""Spoken alphanumeric codes (booking references, account numbers, postcodes): from a caller's spelling to the code,
and from the code to the words the agent reads back.

`normalise` forgives the ways people spell on the phone: digit words and numerals, "oh" for zero next to digits,
"double four", "twenty one", "five hundred", letters by name ("bee", "aitch", "double you") or NATO word, and
"B for Bravo" / "A as in apple" (the example word wins: it is why callers say it). Words that are also everyday
English ("a", "I", "you", "see", "for", "oh", ...) count only next to a clear part of the code or when they are the
whole utterance, so "I want to talk to a person" yields nothing; other words are dropped.

`CodeFormat` validates a code and repairs the confusions a format can decide (O/0, I/1, S/5, B/8).
`SpellingSession` collects a code over several turns, reads it back for a yes, and falls back to the keypad.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Literal, NamedTuple

_DIGIT_WORDS = {
    "zero": "0", "nought": "0", "naught": "0", "nil": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "for": "4", "fore": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "niner": "9",
}  # fmt: skip
_LENIENT_DIGITS = {"to": "2", "too": "2", "won": "1", "ate": "8"}
_TEENS = {
    "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15",
    "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
}  # fmt: skip
_TENS = {
    "twenty": "2", "thirty": "3", "forty": "4", "fourty": "4", "fifty": "5", "sixty": "6", "seventy": "7",
    "eighty": "8", "ninety": "9",
}  # fmt: skip
_LETTER_NAMES = {c: c.upper() for c in "abcdefghijklmnpqrstuvwxyz"} | {
    "ay": "A", "bee": "B", "be": "B", "see": "C", "sea": "C", "cee": "C", "dee": "D", "ee": "E", "eff": "F",
    "ef": "F", "gee": "G", "aitch": "H", "haitch": "H", "eye": "I", "jay": "J", "kay": "K", "el": "L", "ell": "L",
    "em": "M", "en": "N", "pee": "P", "pea": "P", "queue": "Q", "cue": "Q", "kew": "Q", "are": "R", "ar": "R",
    "ess": "S", "es": "S", "tee": "T", "tea": "T", "you": "U", "yu": "U", "vee": "V", "ex": "X", "why": "Y",
    "wye": "Y", "zed": "Z", "zee": "Z",
}  # fmt: skip
_NATO = {
    w: w[0].upper()
    for w in (
        "alpha", "alfa", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "juliett",
        "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
        "whiskey", "whisky", "xray", "yankee", "zulu",
    )
}  # fmt: skip
_O_WORDS = frozenset({"o", "oh"})
"""Zero next to a digit, else the letter O."""
_WEAK = frozenset({
    "a", "i", "you", "are", "be", "see", "sea", "tea", "why", "eye", "pea", "queue", "cue", "ex", "em", "es", "oh",
    "for", "fore", "to", "too", "won", "ate",
})  # fmt: skip
"""Everyday words that count only next to a clear part of the code."""
_REPEAT = {"double": 2, "triple": 3, "treble": 3}
_SEPARATORS = {"dash": "-", "hyphen": "-", "-": "-", "slash": "/", "stroke": "/", "/": "/", "space": " "}
_CONNECTORS = (("as", "in"), ("is", "for"), ("for",), ("like",))
_NOT_EXAMPLES = frozenset({"the", "and", "then", "that", "this", "example", "instance", "number", "letter", "digit"})
_NOT_ACRONYMS = frozenset({"OK", "NO", "YES"})
_TOKEN = re.compile(r"[A-Za-z0-9']+|[-/]")


class _Unit(NamedTuple):
    kind: Literal["code", "o", "sep"]
    text: str
    start: int
    """First token index."""
    end: int
    """Token index after the unit."""
    weak: bool


def _words(text: str) -> tuple[list[str], list[str]]:
    """The tokens as written and lower-cased; hyphens inside lower-case words ("twenty-one") split like spaces."""
    text = re.sub(r"(?i)\bx-ray\b", "xray", text)
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)
    raw = [t.strip("'") for t in _TOKEN.findall(text)]
    raw = [t for t in raw if t]
    return raw, [t.lower() for t in raw]


def _digit(word: str, lenient: bool) -> str | None:
    if len(word) == 1 and word.isdigit():
        return word
    return _DIGIT_WORDS.get(word) or (_LENIENT_DIGITS.get(word) if lenient else None)


def _below_hundred(words: list[str], i: int, lenient: bool) -> tuple[str, int] | None:
    w = words[i] if i < len(words) else ""
    if w in _TEENS:
        return _TEENS[w], i + 1
    if w in _TENS:
        unit = _digit(words[i + 1], lenient) if i + 1 < len(words) else None
        return (_TENS[w] + unit, i + 2) if unit and unit != "0" else (_TENS[w] + "0", i + 1)
    d = _digit(w, lenient)
    return (d, i + 1) if d else None


def _number(words: list[str], i: int, lenient: bool) -> tuple[str, int] | None:
    """A number phrase at i: "seven", "twenty one", "five hundred (and) twelve"; its digits and end."""
    w, nxt = words[i], words[i + 1] if i + 1 < len(words) else ""
    if nxt == "hundred":
        head = "1" if w == "a" else _digit(w, lenient)
        if head and head != "0":
            j = i + 3 if i + 2 < len(words) and words[i + 2] == "and" else i + 2
            rest = _below_hundred(words, j, lenient)
            return (head + rest[0].zfill(2), rest[1]) if rest else (head + "00", i + 2)
    if w == "hundred":
        return "100", i + 1
    return _below_hundred(words, i, lenient)


def _unit_at(raw: list[str], words: list[str], i: int, lenient: bool) -> _Unit | None:
    w, nxt = words[i], words[i + 1] if i + 1 < len(words) else ""
    if w == "double" and nxt in ("you", "u"):
        return _Unit("code", "W", i, i + 2, False)
    if w == "x" and nxt == "ray":
        return _Unit("code", "X", i, i + 2, False)
    if w in _REPEAT:
        inner = _unit_at(raw, words, i + 1, lenient) if nxt else None
        if inner is None or inner.kind == "sep":
            return None
        return inner._replace(text=inner.text * _REPEAT[w], start=i, weak=False)
    num = _number(words, i, lenient)
    if num is not None:
        return _Unit("code", num[0], i, num[1], w in _WEAK and num[1] == i + 1)
    if w in _O_WORDS:
        return _Unit("o", "O", i, i + 1, w in _WEAK)
    if w in _LETTER_NAMES or w in _NATO:
        return _Unit("code", _LETTER_NAMES.get(w) or _NATO[w], i, i + 1, w in _WEAK)
    if w in _SEPARATORS:
        return _Unit("sep", _SEPARATORS[w], i, i + 1, False)
    r = raw[i]
    if r.isalnum() and (any(c.isdigit() for c in r) or (r.isupper() and r not in _NOT_ACRONYMS)):
        return _Unit("code", r.upper(), i, i + 1, False)  # "AB12", "1234", or an acronym the recogniser wrote
    return None


def _is_example(word: str) -> bool:
    if word in _NATO:
        return True
    vocabulary = (_DIGIT_WORDS, _LENIENT_DIGITS, _TEENS, _TENS, _LETTER_NAMES, _SEPARATORS, _REPEAT, _NOT_EXAMPLES)
    return word.isalpha() and len(word) >= 3 and not any(word in v for v in vocabulary) and word != "hundred"


def _with_example(words: list[str], unit: _Unit) -> _Unit:
    """A letter followed by "as in apple", "for Bravo", "like Charlie": the example's letter."""
    if unit.kind == "sep" or len(unit.text) != 1 or not unit.text.isalpha():
        return unit
    for conn in _CONNECTORS:
        k = unit.end + len(conn)
        if tuple(words[unit.end : k]) == conn and k < len(words) and _is_example(words[k]):
            return _Unit("code", _NATO.get(words[k], words[k][0].upper()), unit.start, k + 1, False)
    return unit


def _units(text: str, lenient: bool) -> list[_Unit]:
    raw, words = _words(text)
    units: list[_Unit] = []
    i = 0
    while i < len(words):
        unit = _unit_at(raw, words, i, lenient)
        if unit is None:
            i += 1
            continue
        unit = _with_example(words, unit)
        units.append(unit)
        i = unit.end
    if len(words) == 1:
        return units
    strong = [u for u in units if not u.weak]
    starts, ends = {u.start for u in strong}, {u.end for u in strong}
    return [u for u in units if not u.weak or u.start in ends or u.end in starts]


def _digit_context(codes: list[_Unit], k: int) -> bool:
    for step in (-1, 1):
        j = k + step
        while 0 <= j < len(codes) and codes[j].kind == "o":
            j += step
        if 0 <= j < len(codes) and codes[j].text[0 if step > 0 else -1].isdigit():
            return True
    return False


def normalise(text: str, *, keep_separators: bool = False, lenient_digits: bool = False) -> str:
    """The code a caller spelled, upper-case ("A as in apple, double four" -> "A44"); '' when nothing was spelled.

    `keep_separators` keeps spoken "dash", "slash", "space" (and written - and /) as `-`, `/`, ` `.
    `lenient_digits` also reads "to"/"too" as 2, "won" as 1 and "ate" as 8.
    """
    units = _units(text, lenient_digits)
    codes = [u for u in units if u.kind != "sep"]
    parts: list[str] = []
    for u in units:
        if u.kind == "sep":
            if keep_separators and parts and parts[-1] not in _SEPARATORS.values():
                parts.append(u.text)
        elif u.kind == "o":
            parts.append(("0" if _digit_context(codes, codes.index(u)) else "O") * len(u.text))
        else:
            parts.append(u.text)
    while parts and parts[-1] in _SEPARATORS.values():
        parts.pop()
    return "".join(parts)


_CONFUSABLE = {"O": "0", "0": "O", "I": "1", "1": "I", "S": "5", "5": "S", "B": "8", "8": "B"}
_TEMPLATE = re.compile(r"[LDA][LDA /-]*")
_CLASS = {"L": "[A-Z]", "D": "[0-9]", "A": "[A-Z0-9]"}
REGEX_MAX_LENGTH = 20
"""A code checked by a regular expression is taken as unfinished while shorter than this."""


def _fit(c: str, slot: str) -> str:
    """`c` swapped into the slot's class when it is a confusable of the other class."""
    wrong = (slot == "L" and c.isdigit()) or (slot == "D" and c.isalpha())
    return _CONFUSABLE.get(c, c) if wrong else c


def _fits(c: str, slot: str) -> bool:
    return c.isalpha() if slot == "L" else c.isdigit() if slot == "D" else c.isalnum()


@dataclass(frozen=True)
class CodeFormat:
    """The expected shape of a code (without separators): a template or a regular expression.

    A template uses `L` (letter), `D` (digit) and `A` (either), optionally grouped by spaces, dashes or slashes
    (`LL DDDD`); its groups then guide the read-back. Anything else is a regular expression (`^[A-Z]{2}\\d{4}$`).
    """

    pattern: str
    template: str = field(init=False)
    """The template's L/D/A slots without separators; '' for a regular expression."""
    groups: tuple[int, ...] = field(init=False)
    """Group sizes from a template's separators; () when it has none."""
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if _TEMPLATE.fullmatch(self.pattern):
            parts = re.split(r"[ /-]+", self.pattern.strip(" /-"))
            slots = "".join(parts)
            regex = "".join(_CLASS[c] for c in slots)
            groups = tuple(len(p) for p in parts) if len(parts) > 1 else ()
        else:
            slots, regex, groups = "", self.pattern, ()
        try:
            compiled = re.compile(regex)
        except re.error as e:
            raise ValueError(f"format {self.pattern!r} is not a valid regular expression: {e}") from None
        object.__setattr__(self, "template", slots)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "_regex", compiled)

    @property
    def digits_only(self) -> bool:
        """A template of digits only: the keypad can enter such a code."""
        return bool(self.template) and set(self.template) == {"D"}

    def matches(self, code: str) -> bool:
        return self._regex.fullmatch(code) is not None

    def fix(self, code: str) -> str | None:
        """`code` if it matches, else the one match reachable by swapping confusables (O/0, I/1, S/5, B/8), else None.

        A template swaps each character that sits in the wrong class; a code longer than the template gives the one
        window of it that fits (a stray digit the ASR put before the code, "1. It is KL4729."; the read-back catches
        a wrong guess). A regular expression tries up to three swaps and gives up when more than one candidate
        matches.
        """
        if self.matches(code):
            return code
        if self.template:
            n = len(self.template)
            if len(code) > n:
                found = {f for i in range(len(code) - n + 1) if (f := self.fix(code[i : i + n])) is not None}
                return found.pop() if len(found) == 1 else None
            if len(code) != n:
                return None
            fixed = "".join(_fit(c, s) for c, s in zip(code, self.template, strict=True))
            return fixed if self.matches(fixed) else None
        spots = [i for i, c in enumerate(code) if c in _CONFUSABLE]
        for n in range(1, min(3, len(spots)) + 1):
            found = set()
            for combo in combinations(spots, n):
                swapped = "".join(_CONFUSABLE[c] if i in combo else c for i, c in enumerate(code))
                if self.matches(swapped):
                    found.add(swapped)
            if found:
                return found.pop() if len(found) == 1 else None
        return None

    def could_continue(self, code: str) -> bool:
        """Whether `code` may be the start of a valid code (so the caller should go on)."""
        if self.template:
            return len(code) < len(self.template) and all(
                _fits(_fit(c, s), s) for c, s in zip(code, self.template, strict=False)
            )
        return len(code) < REGEX_MAX_LENGTH


_SPOKEN_DIGITS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven",
    "8": "eight", "9": "nine",
}  # fmt: skip
_READ_NATO = {
    "B": "Bravo", "C": "Charlie", "D": "Delta", "E": "Echo", "F": "Foxtrot", "G": "Golf", "M": "Mike",
    "N": "November", "P": "Papa", "S": "Sierra", "T": "Tango", "V": "Victor", "Z": "Zulu",
}  # fmt: skip
"""Letters that sound alike on a narrow-band line get their NATO word."""
_READ_SEPARATORS = {"-": "dash", "/": "slash"}


def _chunks(run: str, size: int) -> list[str]:
    """`run` in groups of `size`; a last group of one joins the one before."""
    out = [run[i : i + size] for i in range(0, len(run), size)]
    if len(out) > 1 and len(out[-1]) == 1:
        last = out.pop()
        out[-1] += last
    return out


def _split(run: str, group: int | Sequence[int] | None) -> list[str]:
    if isinstance(group, int):
        return _chunks(run, group)
    if group:
        out: list[str] = []
        i = 0
        for size in group:
            if i < len(run):
                out.append(run[i : i + size])
            i += size
        return out + (_chunks(run[i:], 3) if i < len(run) else [])
    runs = re.findall(r"[A-Z]+|[0-9]+", run)
    parts = runs if len(runs) > 1 and all(len(r) >= 2 for r in runs) else [run]
    return [c for p in parts for c in _chunks(p, 4 if p.isdigit() and len(p) >= 8 else 3)]


def _say(c: str) -> str:
    if c in _SPOKEN_DIGITS:
        return _SPOKEN_DIGITS[c]
    return f"{c} as in {_READ_NATO[c]}" if c in _READ_NATO else c


def read_back(code: str, group: int | Sequence[int] | None = None) -> str:
    """The words that confirm `code` to a caller: one item per character, commas between items, a full stop
    between groups so that TTS pauses there.

    Digits are words ("zero", never "oh"); letters are capitals, those that sound alike get their NATO word
    ("B as in Bravo"). Groups: an int gives groups of that size, a sequence gives the sizes (a format's groups);
    by default the code splits where letters meet digits (when each run has two or more), and runs longer than four
    into threes (fours for digit runs of eight or more), never leaving a group of one. Separators split groups and
    "-" and "/" are said ("dash", "slash"). `read_back("AB1234") == "A, B as in Bravo. one, two, three, four"`.
    """
    if isinstance(group, int) and group < 1:
        raise ValueError("group must be at least 1")
    out: list[str] = []
    for part in re.findall(r"[A-Z0-9]+|[-/]", code.upper()):
        if part in _READ_SEPARATORS:
            out.append(_READ_SEPARATORS[part])
        else:
            out += [", ".join(_say(c) for c in g) for g in _split(part, group)]
    return ". ".join(out)


@dataclass(frozen=True)
class Ask:
    """Say `text` and listen for (more of) the code; `keypad`: the caller should now type it."""

    text: str
    keypad: bool = False


@dataclass(frozen=True)
class Confirm:
    """Say `text` (the read-back and a question); a yes finishes with `code`."""

    code: str
    text: str


@dataclass(frozen=True)
class Done:
    code: str


@dataclass(frozen=True)
class Invalid:
    """What the caller gave was `reason` ("nothing heard", "format"); `text` asks again."""

    reason: str
    text: str


@dataclass(frozen=True)
class Failed:
    """The attempts ran out; say `text` and move on (offer a person, for example)."""

    text: str


SpellingEvent = Ask | Confirm | Done | Invalid | Failed

KEYPAD_PROMPT = "Please type it on your keypad, then press the hash key."
_YES = frozenset({
    "yes", "yeah", "yep", "yup", "yah", "correct", "right", "exactly", "affirmative", "sure", "perfect", "absolutely",
    "ok", "okay",
})  # fmt: skip
_NO = frozenset({"no", "nope", "nah", "wrong", "incorrect", "negative", "not"})
_RESTART = re.compile(r"\b(start (again|over)|restart|clear|scratch that|begin again|from the (beginning|start))\b")
_END = re.compile(r"\b(that'?s (it|all)|that is (it|all)|done|finished)\b")
_CORRECTION = re.compile(r"\blast (?:digit|letter|character|number|one) (?:is|was|should be|should have been)\b(.*)")


def _answer(words: list[str]) -> bool | None:
    """Yes (True), no (False) or neither; a negation anywhere makes it a no ("that's not right")."""
    if any(w in _NO or w.endswith("n't") for w in words):
        return False
    return True if any(w in _YES for w in words) else None


class SpellingSession:
    """Collects one code over several caller turns (sans-IO: feed transcripts and keys, say the events' texts).

    Each turn's spelling is appended; when the code fits the format (or, without a format, after each turn) it is
    read back for a yes. A no restarts (a no followed by a new spelling takes that spelling), "start again" or
    "clear" empties the code, "the last digit is five" replaces the last character, and "that's it" ends a code
    that is still short. Keys: digits append, `*` clears, `#` ends; while confirming `1`/`#` mean yes and `2`/`*`
    no. After `max_attempts` misses (denials, invalid or empty turns) it offers the keypad when the code can be
    typed (`keypad`, by default when the format is all digits), then gives up with `Failed`.
    """

    def __init__(
        self,
        prompt: str,
        fmt: CodeFormat | None = None,
        *,
        max_attempts: int = 3,
        keypad: bool | None = None,
        lenient_digits: bool = False,
    ) -> None:
        self.prompt = prompt
        self.fmt = fmt
        self.max_attempts = max_attempts
        self.keypad = (fmt is not None and fmt.digits_only) if keypad is None else keypad
        self.lenient_digits = lenient_digits
        self._state: Literal["collect", "confirm", "keypad", "over"] = "collect"
        self._code = ""
        self._attempts = 0
        self._final: Done | Failed | None = None

    @property
    def on_keypad(self) -> bool:
        """Spoken input is no longer accepted: the caller types the code."""
        return self._state == "keypad"

    def start(self) -> Ask:
        return Ask(self.prompt)

    def feed_transcript(self, text: str) -> SpellingEvent:
        if self._final is not None:
            return self._final
        if self._state == "keypad":
            return Ask(KEYPAD_PROMPT, keypad=True)
        words = [w.strip("'") for w in re.findall(r"[a-z0-9']+", text.lower())]
        said = " ".join(words)
        if _RESTART.search(said):
            self._state, self._code = "collect", ""
            return Ask(f"Okay, let's start again. {self.prompt}")
        content = normalise(text, lenient_digits=self.lenient_digits)
        fix = _CORRECTION.search(said)
        if fix and self._code:
            new = normalise(fix.group(1), lenient_digits=self.lenient_digits)
            if new:
                self._code = self._code[:-1] + new
                return self._evaluate(final=self._state == "confirm")
        if self._state == "confirm":
            answer = _answer(words)
            if answer is None and _END.search(said):
                answer = True  # "that's it"
            if answer:
                return self._over(Done(self._code))
            if answer is False:
                event = self._fail(Ask("Sorry about that. Please spell it again from the start."))
                if content and isinstance(event, Ask) and not event.keypad:
                    self._code = content
                    return self._evaluate(final=False)
                return event
            if not content:
                return Confirm(self._code, f"Is it {read_back(self._code, self._groups)}? Please say yes or no.")
        end = _END.search(said) is not None or (not content and _answer(words) is True)
        self._code += content
        if not self._code:
            return self._fail(Invalid("nothing heard", f"Sorry, I did not catch that. {self.prompt}"))
        if not content and not end:
            return Ask(f"{read_back(self._code)}. Go on.")
        return self._evaluate(final=end)

    def feed_dtmf(self, digit: str) -> SpellingEvent | None:
        """The event for a key, or None when there is nothing to say yet."""
        if self._final is not None:
            return self._final
        if self._state == "confirm":
            if digit in ("1", "#"):
                return self._over(Done(self._code))
            if digit in ("2", "*"):
                return self._fail(Ask("Sorry about that. Please spell it again from the start."))
            return None
        if digit == "*":
            self._code = ""
            return Ask(f"Cleared. {KEYPAD_PROMPT if self.on_keypad else self.prompt}", keypad=self.on_keypad)
        if digit == "#":
            if not self._code:
                return self._fail(Invalid("nothing heard", KEYPAD_PROMPT if self.on_keypad else self.prompt))
            return self._evaluate(final=True)
        if digit.isdigit():
            self._code += digit
            if self.fmt is not None and self.fmt.template and len(self._code) >= len(self.fmt.template):
                return self._evaluate(final=True)
        return None

    @property
    def _groups(self) -> tuple[int, ...] | None:
        return self.fmt.groups if self.fmt is not None and self.fmt.groups else None

    def _evaluate(self, final: bool) -> SpellingEvent:
        code = self._code
        fixed = self.fmt.fix(code) if self.fmt is not None else code
        if fixed:
            self._code = fixed
            if self._state == "keypad":
                return self._over(Done(fixed))
            self._state = "confirm"
            return Confirm(fixed, f"I have {read_back(fixed, self._groups)}. Is that right?")
        if not final and self.fmt is not None and self.fmt.could_continue(code):
            self._state = "collect"
            return Ask(f"{read_back(code)}. Go on.")
        if self._state == "keypad":
            return self._fail(Invalid("format", f"Sorry, that is not a valid code. {KEYPAD_PROMPT}"))
        retry = f"Sorry, {read_back(code)} is not a valid code. Please spell it again from the start."
        return self._fail(Invalid("format", retry))

    def _fail(self, retry: Ask | Invalid) -> SpellingEvent:
        self._attempts += 1
        self._code = ""
        if self._attempts < self.max_attempts:
            if self._state != "keypad":
                self._state = "collect"
            return retry
        if self._state != "keypad" and self.keypad:
            self._state, self._attempts = "keypad", 0
            return Ask(f"Let's try the keypad. {KEYPAD_PROMPT}", keypad=True)
        return self._over(Failed("Sorry, I could not get the code."))

    def _over(self, event: Done | Failed) -> Done | Failed:
        self._state, self._final = "over", event
        return event
