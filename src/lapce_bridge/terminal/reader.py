"""The PTY reader's side of a terminal: bytes in, command output and state transitions out.

Theory of operation: every chunk the PTY yields goes through the OSC parser; text belongs to
the running execution once its start mark was seen (or, in raw mode, once the echo of our line
has passed); marks move the state machine:
- 633 C starts the command; 633 D ends it, but only when it carries our nonce, so a program
  printing "633;D" cannot end a command early; A, B and P;Cwd announce a working integration;
- in the fallback modes only our tokened P;LbStart / P;LbEnd marks count (the probe's too);
- P;Cwd and OSC 7 track the shell's cwd in every mode.
Everything here runs inside the loop's reader callback: no awaits, no I/O.
"""

from __future__ import annotations

import asyncio

from lapce_bridge.core.clock import Clock
from lapce_bridge.terminal.execution import Execution
from lapce_bridge.terminal.osc import Marker, OscParser, Text
from lapce_bridge.terminal.result import ExecResult, Mode, Recovery, Status


class MarkerReader:
    """Mixed into `Terminal`, which owns the state declared here."""

    parser: OscParser
    clock: Clock
    protocol: Mode
    cwd: str | None
    ready_fut: asyncio.Future[bool] | None
    probe_waiter: tuple[str, asyncio.Future[int | None]] | None
    _exec: Execution | None
    _raw_skip_echo: bool
    _nonce_tail: bytes

    def _finish(
        self,
        ex: Execution,
        *,
        exit_code: int | None,
        status: Status,
        recovery: Recovery | None = None,
    ) -> ExecResult:
        raise NotImplementedError

    def _on_data(self, data: bytes) -> None:
        for event in self.parser.feed(data):
            if type(event) is Text:
                ex = self._exec
                if ex is not None and ex.started:
                    ex.feed(event.data, self.clock.now())
                elif ex is not None and self.protocol is Mode.RAW_OUTPUT:
                    self._raw_text(ex, event.data)
            else:
                assert isinstance(event, Marker)
                self._on_marker(event)

    def _raw_text(self, ex: Execution, data: bytes) -> None:
        # The tty echoes the line that sourced the command: skip through its newline.
        if self._raw_skip_echo:
            nl = data.find(b"\n")
            if nl < 0:
                return
            self._raw_skip_echo = False
            data = data[nl + 1 :]
        ex.begin(self.clock.now())
        if data:
            ex.feed(data, self.clock.now())

    def _on_marker(self, m: Marker) -> None:
        if m.osc != 633:
            if m.osc == 7 and m.value:
                self.cwd = m.value
            return
        kind = m.kind
        if kind == "P":
            self._on_property(m)
            return
        if self.protocol is not Mode.SHELL_INTEGRATION:
            return
        ex = self._exec
        if kind == "C":
            if ex is not None and not ex.started:
                ex.begin(self.clock.now())
        elif kind == "D":
            # Only our hook knows the nonce: a program printing "633;D" cannot end a command.
            if ex is not None and m.raw.endswith(self._nonce_tail):
                self._finish(ex, exit_code=m.exit_code, status=Status.COMPLETED)
        elif kind in ("A", "B"):
            self._set_ready()

    def _on_property(self, m: Marker) -> None:
        key, value = m.key, m.value or ""
        if key == "Cwd":
            self.cwd = value
            if self.protocol is Mode.SHELL_INTEGRATION:
                self._set_ready()
            return
        if key not in ("LbStart", "LbEnd"):
            return
        if key == "LbStart":
            ex = self._exec
            if ex is not None and not ex.started and value == ex.token:
                ex.begin(self.clock.now())
            return
        code_text, _, token = value.rpartition(":")
        code = int(code_text) if code_text.lstrip("-").isdigit() else None
        probe = self.probe_waiter
        if probe is not None and token == probe[0]:
            if not probe[1].done():
                probe[1].set_result(code)
            return
        ex = self._exec
        if ex is not None and token == ex.token:
            self._finish(ex, exit_code=code, status=Status.COMPLETED)

    def _set_ready(self) -> None:
        if self.ready_fut is not None and not self.ready_fut.done():
            self.ready_fut.set_result(True)
