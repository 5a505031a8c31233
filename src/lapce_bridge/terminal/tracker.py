"""Sans-I/O command tracker: parser events in, what happened to the command in flight out.

Theory of operation (the terminal's state machine, kept apart from all I/O as h11 keeps
its connection state): the terminal hands a command to the shell with a fresh random secret
and tells the tracker (`submit`); the tracker then reads the OSC parser's events and answers
with `Started`, `Output`, `Finished`, `Ready`, `CwdChanged` and `ProbeAnswered` events. How a
command's end is found is the tracker's `detection`:

- `INTEGRATION`: our shell hooks print `633;E;<cmd>;<nonce>` then `633;C` as the command
  starts, and `633;P;Cwd`, `633;D;<status>;<nonce>` as it ends. The nonce is the secret of
  this command only: it travels in the line typed into the PTY, never in an environment or
  a file, and the next command gets another one.
- `END_MARKER`: the typed line itself prints `633;P;LbStart=<token>` before the command and
  `633;P;LbEnd=<status>:<token>` after it (sh, dash, or hooks that were removed).
  Typed delivery (bash, zsh: `modes.typed`) adds the marks of the line-by-line hand-over:
  the echo of what the bridge typed and of each loaded line is hidden up to the end of the
  line editor's work (bash: the first newline after `633;P;LbEcho=<nonce>`, readline being
  set to scroll long lines rather than wrap them; zsh: its POSTEDIT mark `633;P;LbEdit`
  after `633;P;LbZle=<nonce>`);
  a job's notice zle prints while the keys are typed (after its POSTEDIT mark, before our
  widget's, up to the prompt it draws again) is the command's output, as it is between
  commands (kept for the next command), and so is one zsh prints after a command's end mark
  and before its prompt (a job that ended while precmd ran);
  the command starts at the first line's; `633;P;LbMore=<nonce>` (the next prompt) or
  `633;P;LbCont=<nonce>` (a continuation prompt) asks for the next line (`LineWanted`) and
  hides the prompt and the echo that follow; `633;P;LbNext=<nonce>` only hides them (the
  shell loads the line itself).
- `RAW`: no marks; output starts after the tty's echo of the typed line and the command ends
  when its output goes quiet (the waiting logic decides that, then calls `abandon`).

Anti-spoofing rules (each has its unit test):
1. A `D` ends the command only when it carries the nonce of the command in flight; a `D`
   with another nonce (an earlier command's, a forged one) or none is ignored.
2. A `C` starts the command only right after an `E` carrying the nonce in flight, so a `C`
   printed by an earlier command's leftover process does not start the next one early.
3. `LbStart` / `LbEnd` count only with the token in flight (or the probe's token).
4. After a command's end, nothing ends or starts anything until the next `submit`: a late
   marker of command N can never finish command N+1, whose result is therefore its own.
5. When the hooks are gone mid-session (`trap - DEBUG` removes the start hook, but the end
   hook still answers the nonce), a `D` without a start still ends the command, and its
   output is the text after the tty's echo of the typed line.

Everything here is plain data: no clocks, no asyncio, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias, cast

from lapce_bridge.terminal.frozen import quick_init
from lapce_bridge.terminal.osc import Event, Marker, Text

__all__ = [
    "CommandTracker",
    "CwdChanged",
    "EndDetection",
    "Executing",
    "Finished",
    "LineWanted",
    "Output",
    "ProbeAnswered",
    "Ready",
    "Started",
    "TrackerEvent",
]

# A job's notice as zsh prints it (`[1]  + done       sleep 1`, `[2]  - 4242 terminated ...`),
# wherever it starts in the captured text (after the tty's echo of typed keys, say).
_JOB_NOTICE = re.compile(rb"\[[0-9]+\] +[+-]? [^\r\n]*\r?\n")
_PRESTART_LIMIT = 64 * 1024  # text kept from before a start mark, for rule 5
_CARRY_LIMIT = 64 * 1024  # text kept from between commands, for the next one


class EndDetection(StrEnum):
    """How a command's end is found (what the result reports is `result.Mode`)."""

    INTEGRATION = "integration"
    END_MARKER = "end_marker"
    RAW = "raw"


@dataclass(frozen=True, slots=True)
class Started:
    pass


@quick_init
@dataclass(frozen=True, slots=True)
class Output:
    data: bytes


@quick_init
@dataclass(frozen=True, slots=True)
class Finished:
    exit_code: int | None


@dataclass(frozen=True, slots=True)
class Executing:
    """Typed delivery: the shell parsed a line and runs it (`633;C` from PS0 or preexec).
    Until then a SIGINT would reach the shell's reader, not the command."""


@dataclass(frozen=True, slots=True)
class LineWanted:
    """The shell asks for the command's next line (typed delivery); `continuation`: at its
    continuation prompt (inside a block, a quote or a heredoc), not its primary prompt."""

    continuation: bool


@dataclass(frozen=True, slots=True)
class Ready:
    """Integration announced itself: a prompt or cwd mark of our hooks."""


@quick_init
@dataclass(frozen=True, slots=True)
class CwdChanged:
    cwd: str


@dataclass(frozen=True, slots=True)
class ProbeAnswered:
    exit_code: int | None


TrackerEvent: TypeAlias = (
    Started | Output | Finished | Ready | CwdChanged | ProbeAnswered | LineWanted | Executing
)

_STARTED = Started()
_EXECUTING = Executing()
_READY = Ready()


class CommandTracker:
    __slots__ = (
        "_announced",
        "_carry",
        "_carry_from",
        "_d_tail",
        "_held",
        "_held_text",
        "_hide",
        "_idle_capture",
        "_prestart",
        "_probe",
        "_ready_due",
        "_secret",
        "_skip_echo",
        "_typed",
        "_until_edit",
        "_until_lf",
        "_zle",
        "cwd",
        "detection",
        "started",
    )

    def __init__(self, detection: EndDetection = EndDetection.INTEGRATION) -> None:
        self.detection = detection
        self.cwd: str | None = None
        self.started = False
        self._secret: str | None = None
        self._d_tail = b""
        self._announced = False
        self._prestart = bytearray()
        self._skip_echo = False
        self._probe: str | None = None
        self._held = False
        self._held_text = bytearray()  # output that came while held, the command's if it ends
        self._typed = False
        self._hide = False  # typed delivery: the echo of typed keys and a loaded line
        self._until_lf = False  # ... which ends at the next newline (bash)
        self._until_edit = False  # ... or at zle's POSTEDIT mark (zsh)
        # What zsh prints between commands (a job's notice, when it ends while zsh waits at
        # its prompt): kept for the next command's output, where a typed session shows it.
        self._carry = bytearray()
        self._idle_capture = False
        # Where the text kept after a zle command's end mark begins in `_carry`: zsh draws
        # its prompt there too (escapes only, kept in `ansi: keep`), dropped at the prompt
        # mark unless something visible came (a notice).
        self._carry_from: int | None = None
        self._zle = False  # the command in flight was typed through zle
        # Whether a prompt or cwd mark is to be answered `Ready`: once after each change of
        # state (a new shell, a command handed over, started or ended); the marks after it
        # (several a prompt) would only repeat it.
        self._ready_due = True

    @property
    def in_flight(self) -> bool:
        return self._secret is not None

    def submit(self, secret: str, *, typed: bool = False) -> None:
        """A command was handed to the shell with this nonce (or end-marker token); `typed`:
        line by line through the line editor (`modes.typed`)."""
        self._secret = secret
        self._typed = typed
        self._hide = typed
        self._until_lf = False
        self._until_edit = False
        # `_idle_capture` stays: zle may have left its prompt to print a job's notice just
        # before these keys (its POSTEDIT mark came), or the last command's end mark has not
        # reached its prompt yet (zsh may still print a notice there, after the tty's echo of
        # these keys): either is this command's output, up to the prompt mark.
        self._zle = False
        self._d_tail = (";" + secret + "\x07").encode()
        self.started = False
        self._announced = False
        self._prestart.clear()
        self._skip_echo = self.detection is EndDetection.RAW
        self._held = False
        self._held_text.clear()
        self._ready_due = True

    def hold_output(self) -> None:
        """Take no more output for the command in flight for now (its end mark still counts):
        the terminal is about to type a question of its own, whose echo is not the command's.
        What comes meanwhile is kept aside: when the command's own end mark comes after all
        (the shell was found at its prompt before its last output was read), it was the
        command's output and is given to it; when the question is answered, it is dropped."""
        self._held = True

    def abandon(self) -> None:
        """The command ended without its end mark (idle in raw mode, the shell's death)."""
        self._secret = None
        self.started = False
        self._announced = False
        self._zle = False
        self._prestart.clear()
        self._held_text.clear()
        self._ready_due = True

    def expect_probe(self, token: str | None) -> None:
        self._probe = token

    def reset(self, detection: EndDetection) -> None:
        """A new shell process: nothing of the old one's stream carries over."""
        self.detection = detection
        self.abandon()
        self._probe = None
        self._carry.clear()
        self._idle_capture = False
        self._carry_from = None

    def feed(self, events: list[Event]) -> list[TrackerEvent]:
        out: list[TrackerEvent] = []
        for event in events:
            if type(event) is Text:
                self._text(event.data, out)
            else:
                self._marker(cast(Marker, event), out)  # (Event is Text | Marker)
        return out

    def _text(self, data: bytes, out: list[TrackerEvent]) -> None:
        if self._secret is None:
            if self._idle_capture:
                self._keep(data)
            return
        if self._held:
            if len(self._held_text) < _PRESTART_LIMIT:
                self._held_text += data[: _PRESTART_LIMIT - len(self._held_text)]
            return
        if self._typed:
            if self._hide:
                if self._idle_capture:  # zle left its prompt to print a job's notice
                    self._keep(data)
                    return
                if not self._until_lf:
                    return
                nl = data.find(b"\n")
                if nl < 0:
                    return
                data = data[nl + 1 :]
                self._echo_ended(out)
                if not data:
                    return
            out.append(Output(data))
            return
        if self.started:
            out.append(Output(data))
            return
        if self.detection is EndDetection.RAW:
            if self._skip_echo:
                nl = data.find(b"\n")
                if nl < 0:
                    return
                self._skip_echo = False
                data = data[nl + 1 :]
            self.started = True
            out.append(_STARTED)
            if data:
                out.append(Output(data))
            return
        if len(self._prestart) < _PRESTART_LIMIT:
            self._prestart += data[: _PRESTART_LIMIT - len(self._prestart)]

    def _marker(self, m: Marker, out: list[TrackerEvent]) -> None:
        if m.osc != 633:
            if m.osc == 7 and m.value:
                self.cwd = m.value
                out.append(CwdChanged(m.value))
            return
        kind = m.kind
        if kind in ("A", "B") and self._idle_capture:
            self._idle_capture = False
            self._drop_prompt_drawing()
        if kind == "P":
            self._property(m, out)
            return
        if self.detection is not EndDetection.INTEGRATION:
            return
        if kind == "E":
            self._announced = self._secret is not None and m.nonce == self._secret
        elif kind == "C":
            if self._typed:
                if self.started and not self._hide and self._secret is not None:
                    out.append(_EXECUTING)
            elif self._announced and not self.started:
                self._announced = False
                self._start(out)
        elif kind == "D":
            if self._secret is not None and m.raw.endswith(self._d_tail):
                self._end(m.exit_code, out)
        elif kind in ("A", "B") and self._ready_due:
            self._ready_due = False
            out.append(_READY)

    def _property(self, m: Marker, out: list[TrackerEvent]) -> None:
        key, value = m.key, m.value or ""
        if key == "Cwd":
            self.cwd = value
            out.append(CwdChanged(value))
            if self.detection is EndDetection.INTEGRATION and self._ready_due:
                self._ready_due = False
                out.append(_READY)
            return
        if self._typed and self._secret is not None:
            if key in ("LbEcho", "LbZle"):
                if self._hide and value == self._secret:
                    self._until_lf = key == "LbEcho"
                    self._until_edit = self._zle = key == "LbZle"
                    self._idle_capture = False
                return
            if key == "LbEdit":
                if self._hide and self._until_edit:
                    self._echo_ended(out)
                elif self._hide:
                    # Before our widget ran: zle left its prompt to print a job's notice (a
                    # job ended while the keys were typed). It is this command's output, up to
                    # the prompt zle draws again.
                    self._idle_capture = True
                    self._carry_from = len(self._carry)
                return
            if key in ("LbMore", "LbCont", "LbNext"):
                # The prompt and the echo that follow are not output; a redrawn prompt inside
                # an echo is not a request (nor `LbNext`: the shell loads the line itself).
                if not self._hide and value == self._secret:
                    self._hide = True
                    self._until_lf = self._until_edit = False
                    if key != "LbNext":
                        out.append(LineWanted(key == "LbCont"))
                return
        if key == "LbEdit" and self._secret is None:
            self._idle_capture = True  # zle left its prompt to print something
            self._carry_from = len(self._carry)
            return
        if key == "LbStart":
            if self._secret is not None and value == self._secret and not self.started:
                self._start(out)
            return
        if key != "LbEnd":
            return
        code_text, _, token = value.rpartition(":")
        code = int(code_text) if code_text.lstrip("-").isdigit() else None
        if self._probe is not None and token == self._probe:
            self._probe = None
            out.append(ProbeAnswered(code))
        elif self._secret is not None and token == self._secret:
            self._end(code, out)

    def _drop_prompt_drawing(self) -> None:
        """The prompt mark ends a capture (zle left its prompt, or a zle command's end mark
        came): of what came since, only job notices (`[1]  + done ...` lines) are kept. Not
        zle's drawing before its prompt (escapes, kept in `ansi: keep`), not the tty's echo
        of keys typed before zle read them, not a late write of a command that printed its
        own end mark (the next command's output is its own)."""
        start, self._carry_from = self._carry_from, None
        if start is None or start == len(self._carry):
            return
        notices = _JOB_NOTICE.findall(bytes(self._carry[start:]))
        self._carry[start:] = b"".join(notices)

    def _keep(self, data: bytes) -> None:
        if len(self._carry) < _CARRY_LIMIT:
            self._carry += data[: _CARRY_LIMIT - len(self._carry)]

    def _echo_ended(self, out: list[TrackerEvent]) -> None:
        self._hide = self._until_lf = self._until_edit = self._idle_capture = False
        if not self.started:
            self._start(out)
        if self._carry:
            out.append(Output(bytes(self._carry)))
            self._carry.clear()

    def _start(self, out: list[TrackerEvent]) -> None:
        self.started = True
        self._ready_due = True
        self._prestart.clear()
        out.append(_STARTED)

    def _end(self, code: int | None, out: list[TrackerEvent]) -> None:
        if self._held:  # the end mark came after all: what was held is the command's
            self._held = False
            held = bytes(self._held_text)
            self._held_text.clear()
            if held:
                self._text(held, out)
        if not self.started:
            # Rule 5: the start hook is gone; the output follows the echo of the typed line.
            text = bytes(self._prestart)
            nl = text.find(b"\n")
            text = text[nl + 1 :] if nl >= 0 else b""
            out.append(_STARTED)
            if text:
                out.append(Output(text))
        zle = self._zle
        self.abandon()
        out.append(Finished(code))
        if zle:
            # zsh may print a job's notice after precmd, before its prompt: the next
            # command's output, as a typed session shows it before that command.
            self._idle_capture = True
            self._carry_from = len(self._carry)
