"""The command tracker's rules (tracker.py), on byte streams as a shell would print them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lapce_bridge.terminal.osc import OscParser
from lapce_bridge.terminal.tracker import (
    CommandTracker,
    CwdChanged,
    EndDetection,
    Finished,
    LineWanted,
    Output,
    ProbeAnswered,
    Ready,
    Started,
    TrackerEvent,
)

N1 = "a" * 32
N2 = "b" * 32


def e(nonce: str, cmd: str = "echo hi") -> bytes:
    return f"\x1b]633;E;{cmd};{nonce}\x07\x1b]633;C\x07".encode()


def d(code: int, nonce: str | None, cwd: str = "/w") -> bytes:
    tail = f";{nonce}" if nonce is not None else ""
    return f"\x1b]633;P;Cwd={cwd}\x07\x1b]633;D;{code}{tail}\x07\x1b]633;A\x07".encode()


def run(tracker: CommandTracker, *chunks: bytes) -> list[TrackerEvent]:
    parser = OscParser(strip_ansi=True)
    out: list[TrackerEvent] = []
    for chunk in chunks:
        out += tracker.feed(parser.feed(chunk))
    return out


def merged(events: list[TrackerEvent]) -> list[TrackerEvent]:
    """Adjacent Output events joined (a split stream yields the same text in more pieces)."""
    result: list[TrackerEvent] = []
    for ev in events:
        if isinstance(ev, Output) and result and isinstance(result[-1], Output):
            result[-1] = Output(result[-1].data + ev.data)
        else:
            result.append(ev)
    return result


def text(events: list[TrackerEvent]) -> bytes:
    return b"".join(ev.data for ev in events if isinstance(ev, Output))


def finished(events: list[TrackerEvent]) -> list[int | None]:
    return [ev.exit_code for ev in events if isinstance(ev, Finished)]


def test_a_command_starts_at_its_announced_c_and_ends_at_its_own_d() -> None:
    t = CommandTracker()
    t.submit(N1)
    events = run(t, b"typed line echo\r\n", e(N1), b"hi\r\n", d(0, N1))
    assert events[0] == Started()
    assert text(events) == b"hi\r\n"
    assert finished(events) == [0]
    assert CwdChanged("/w") in events
    assert t.cwd == "/w"
    assert not t.in_flight


def test_rule1_d_without_or_with_another_nonce_is_ignored() -> None:
    t = CommandTracker()
    t.submit(N1)
    events = run(t, e(N1), b"x", d(0, None), d(0, N2), d(0, N1[:-1]), b"y", d(5, N1))
    assert finished(events) == [5]
    assert text(events).startswith(b"x")
    assert text(events).endswith(b"y")


def test_rule2_c_counts_only_after_an_e_with_the_nonce_in_flight() -> None:
    t = CommandTracker()
    t.submit(N2)
    forged_start = b"\x1b]633;C\x07junk" + e(N1) + b"more"
    events = run(t, forged_start)
    assert Started() not in events
    events = run(t, e(N2), b"own\n", d(1, N2))
    assert events.count(Started()) == 1
    assert text(events) == b"own\n"


def test_rule3_end_marker_tokens() -> None:
    t = CommandTracker(EndDetection.END_MARKER)
    t.submit("tok")
    events = run(
        t,
        b"\x1b]633;P;LbStart=other\x07",
        b"\x1b]633;P;LbStart=tok\x07out\n",
        b"\x1b]633;P;LbEnd=0:other\x07",
        b"\x1b]633;D;0\x07",
        b"\x1b]633;P;Cwd=/x\x07\x1b]633;P;LbEnd=3:tok\x07",
    )
    assert merged(events) == [Started(), Output(b"out\n"), CwdChanged("/x"), Finished(3)]


def test_rule4_a_late_mark_of_the_previous_command_cannot_end_the_next() -> None:
    t = CommandTracker()
    t.submit(N1)
    assert finished(run(t, e(N1), b"1\n", d(0, N1))) == [0]
    # After the end and before the next submit nothing counts, even the right nonce again.
    assert finished(run(t, e(N1), b"stray", d(0, N1))) == []
    assert not t.in_flight
    t.submit(N2)
    events = run(t, b"leftover of 1", d(0, N1), e(N2), b"two\n", d(0, N1), b"more\n", d(2, N2))
    assert text(events) == b"two\nmore\n"
    assert finished(events) == [2]


def test_nothing_is_output_without_a_command_in_flight() -> None:
    t = CommandTracker()
    assert [ev for ev in run(t, b"prompt $ ", e(N1), b"x") if isinstance(ev, Output)] == []


def test_rule5_end_without_a_start_takes_the_text_after_the_echo() -> None:
    t = CommandTracker()
    t.submit(N1)
    events = run(t, b'__lb_n=...; . "$__lb_cf"\r\n', b"out 1\r\nout 2\r\n", d(4, N1))
    assert merged(events) == [
        CwdChanged("/w"),
        Ready(),
        Started(),
        Output(b"out 1\r\nout 2\r\n"),
        Finished(4),
        Ready(),
    ]
    assert text(events) == b"out 1\r\nout 2\r\n"
    assert finished(events) == [4]


def test_raw_mode_skips_the_echo_and_never_finishes_by_itself() -> None:
    t = CommandTracker(EndDetection.RAW)
    t.submit("unused")
    events = run(t, b". '/x/cmd'", b"\r\nhello\r\n", d(0, "unused"))
    assert merged(events)[:2] == [Started(), Output(b"hello\r\n")]
    assert finished(events) == []
    t.abandon()
    assert not t.in_flight


def test_probe_answers_only_its_token() -> None:
    t = CommandTracker(EndDetection.END_MARKER)
    t.expect_probe("p1")
    events = run(t, b"\x1b]633;P;LbEnd=0:p2\x07\x1b]633;P;LbEnd=0:p1\x07")
    assert events == [ProbeAnswered(0)]
    assert run(t, b"\x1b]633;P;LbEnd=0:p1\x07") == []


def test_output_held_for_a_prompt_check_is_the_commands_when_its_end_mark_comes() -> None:
    # The prompt check found the shell at its prompt while the command's last output and its
    # end mark were still unread in the PTY: the question's hold must not eat that output.
    t = CommandTracker()
    t.submit(N1, typed=True)
    started = run(t, p("LbEcho", N1), b"$ sleep 1; echo finished\r\n\x1b]633;C\x07")
    assert Started() in started
    t.hold_output()
    t.expect_probe("q1")
    events = run(t, b"finished\r\n", d(0, N1))
    assert text(events) == b"finished\r\n"
    assert finished(events) == [0]
    # The question's own answer, after the end, is nobody's output.
    assert run(t, b"$ probe\r\n\x1b]633;P;LbEnd=0:q1\x07") == [ProbeAnswered(0)]


def test_output_held_for_a_question_answered_is_dropped() -> None:
    t = CommandTracker()
    t.submit(N1, typed=True)
    run(t, p("LbEcho", N1), b"$ PROMPT_COMMAND=\r\n")
    t.hold_output()
    t.expect_probe("q1")
    assert run(t, b"$ probe line echo\r\n\x1b]633;P;LbEnd=0:q1\x07") == [ProbeAnswered(0)]
    t.abandon()  # the terminal ends the command with the answer
    t.submit(N2, typed=True)
    events = run(t, p("LbEcho", N2), b"$ echo next\r\nnext\r\n", d(0, N2))
    assert text(events) == b"next\r\n"


def test_ready_marks_only_with_integration() -> None:
    assert Ready() in run(CommandTracker(), b"\x1b]633;A\x07")
    assert Ready() not in run(CommandTracker(EndDetection.END_MARKER), b"\x1b]633;A\x07")


def test_ready_is_answered_once_after_each_change_of_state() -> None:
    """A prompt prints several marks (Cwd, A, B; the line editor's redraw A and B again):
    `Ready` comes once after the shell starts, the command is handed over, starts, ends."""
    prompt = b"\x1b]633;P;Cwd=/w\x07\x1b]633;A\x07$ \x1b]633;B\x07"
    t = CommandTracker()
    assert run(t, prompt, prompt) == [CwdChanged("/w"), Ready(), CwdChanged("/w")]
    t.submit(N1)
    events = run(t, prompt, e(N1), b"out\n", prompt, d(0, N1), prompt)
    readies = [i for i, ev in enumerate(events) if ev == Ready()]
    started, ended = events.index(Started()), events.index(Finished(0))
    # One before the start, one after it (a prompt drawn while the command ran), one after
    # its end; none repeated in between.
    assert len(readies) == 3
    assert readies[0] < started < readies[1] < ended < readies[2]
    t.reset(EndDetection.INTEGRATION)  # a new shell: its first prompt is announced again
    assert Ready() in run(t, prompt)


STREAM = b"".join(
    [b"echo\r\n", b"\x1b]633;C\x07early", e(N1), b"caf\xc3\xa9 \x1b[1mbold\x1b[0m\r\n",
     d(0, N2), b"tail\r\n", d(9, N1)]
)  # fmt: skip


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=6))
def test_the_same_events_for_every_split(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    whole = CommandTracker()
    whole.submit(N1)
    split = CommandTracker()
    split.submit(N1)
    expected = merged(run(whole, STREAM))
    assert merged(run(split, *chunks)) == expected
    assert text(expected) == b"caf\xc3\xa9 bold\r\ntail\r\n"
    assert finished(expected) == [9]


def p(key: str, value: str = "") -> bytes:
    return f"\x1b]633;P;{key}={value}\x07".encode() if value else f"\x1b]633;P;{key}\x07".encode()


def test_typed_bash_hides_the_echo_up_to_the_newline_after_its_echo_mark() -> None:
    t = CommandTracker()
    t.submit(N1, typed=True)
    events = run(
        t,
        N1.encode(),  # readline's echo of the typed nonce
        b"\r\x1b[K\r",
        e(N1)[:-8],  # E (no C: typed lines start at their echo's end)
        p("LbEcho", N2),  # another nonce's echo mark arms nothing
        b"$ ech\n",
        p("LbEcho", N1),
        b"$ echo (b\r\n",
        b"bash: syntax error\r\n",
        p("LbMore", N2),  # a forged request (another nonce) is output's business, not ours
        b"more\r\n",
    )
    assert events[0] == Started()
    assert text(events) == b"bash: syntax error\r\nmore\r\n"
    assert not any(isinstance(ev, LineWanted) for ev in events)


def test_typed_line_requests_hide_the_prompt_and_the_next_echo() -> None:
    t = CommandTracker()
    t.submit(N1, typed=True)
    events = run(
        t,
        p("LbEcho", N1),
        b"$ for i in 1 2\r\n",
        p("LbCont", N1),
        b"> ",
        p("LbEcho", N1),
        p("LbCont", N1),  # PS2 redrawn inside the echo: not a request
        b"> do echo $i; done\r\n1\r\n2\r\n",
        p("LbMore", N1),
        b"$ ",
        p("LbEcho", N1),
        b"$ echo x\r\nx\r\n",
        d(0, N1),
    )
    wanted = [ev for ev in events if isinstance(ev, LineWanted)]
    assert wanted == [LineWanted(True), LineWanted(False)]
    assert text(events) == b"1\r\n2\r\nx\r\n"
    assert finished(events) == [0]


def test_a_line_the_shell_loads_itself_is_hidden_and_asks_nothing() -> None:
    t = CommandTracker()
    t.submit(N1, typed=True)
    events = run(
        t,
        p("LbEcho", N1),
        b"$ echo a\r\na\r\n",
        p("LbNext", N1),  # bash's and zsh's prompt before a line they load themselves
        b"$ ",
        p("LbEcho", N1),
        b"$ for i in 1\r\n",
        p("LbNext", N2),  # another nonce's hides nothing
        b"out\r\n",
        p("LbNext", N1),
        b"> ",
        p("LbEcho", N1),
        b"> done\r\nb\r\n",
        d(0, N1),
    )
    assert not any(isinstance(ev, LineWanted) for ev in events)
    assert text(events) == b"a\r\nout\r\nb\r\n"
    assert finished(events) == [0]


def test_typed_zsh_echo_ends_at_postedit_after_the_widget_and_notices_carry_over() -> None:
    t = CommandTracker()
    t.submit(N1, typed=True)
    events = run(
        t,
        b"vm% " + N1.encode(),
        p("LbEdit"),  # zle left its prompt for a job's notice before our widget ran
        b"[1] + done\r\n",
        p("LbZle", N1),
        b"echo hi\r\r\n",
        p("LbEdit"),
        b"hi\r\n",
        d(0, N1),
    )
    # The notice zle printed while the keys were typed is the command's output, first.
    assert text(events) == b"[1] + done\r\nhi\r\n"
    # Between commands: a notice zle prints at its prompt goes to the next command's output.
    run(t, b"\x1b]633;A\x07vm% \x1b]633;B\x07\r\r\n", p("LbEdit"), b"[2] + terminated\r\n")
    run(t, b"\x1b]633;A\x07vm% \x1b]633;B\x07")
    t.submit(N2, typed=True)
    events = run(t, N2.encode(), p("LbZle", N2), b"ls\r\r\n", p("LbEdit"), b"a b\r\n", d(0, N2))
    assert text(events) == b"[2] + terminated\r\na b\r\n"


def test_typed_zsh_notice_while_the_keys_are_typed_ends_at_the_redrawn_prompt() -> None:
    """As zsh prints it: the notice, then the prompt and the keys typed so far drawn again."""
    t = CommandTracker()
    t.submit(N1, typed=True)
    events = run(
        t,
        b"7\r\r\n",
        p("LbEdit"),
        b"[1]  + done       sleep 0.1\r\n\x1b[0m\x1b[J",
        b"\x1b]633;A\x07vm# \x1b]633;B\x077\x1b[K\x08" + N1.encode(),
        e(N1, "echo x")[:-8],  # the E mark alone (the C comes from preexec, later)
        p("LbZle", N1),
        b"\x1b[32Decho x   \x1b[26D\r\r\n",
        p("LbEdit"),
        b"\x1b]633;C\x07x\r\n",
        d(0, N1),
    )
    assert text(events) == b"[1]  + done       sleep 0.1\r\nx\r\n"
    assert finished(events) == [0]


def _zsh_command(nonce: str, output: bytes) -> list[bytes]:
    """What zsh prints for a command typed through our widget, up to its end mark."""
    return [
        e(nonce, "echo x")[:-8] + p("LbZle", nonce),
        b"echo x\x1b[?1l\x1b>\x1b[?2004l\r\r\n",
        p("LbEdit"),
        b"\x1b]633;C\x07" + output,
        f"\x1b]633;P;Cwd=/w\x07\x1b]633;D;0;{nonce}\x07".encode(),
    ]


@pytest.mark.parametrize("strip", [True, False])
def test_typed_zsh_notice_after_the_end_mark_is_the_next_commands_output(strip: bool) -> None:
    """A job that ends while precmd runs: zsh prints its notice after the end mark, before
    the prompt. A typed session shows it before the next command's output; zle's escapes
    before its prompt are nobody's output (`ansi: keep` too)."""
    t = CommandTracker()
    parser = OscParser(strip_ansi=strip)
    prompt = b"\x1b[0m\x1b[27m\x1b[24m\x1b[J\x1b]633;A\x07vm# \x1b]633;B\x07\x1b[K"

    def feed(*chunks: bytes) -> list[TrackerEvent]:
        return [ev for chunk in chunks for ev in t.feed(parser.feed(chunk))]

    t.submit(N1, typed=True)
    first = feed(*_zsh_command(N1, b"x\r\n"), b"[1]  + done       sleep 0.1\r\n", prompt)
    t.submit(N2, typed=True)
    second = feed(*_zsh_command(N2, b"y\r\n"), prompt)
    t.submit(N1, typed=True)
    third = feed(*_zsh_command(N1, b"z\r\n"), prompt)
    assert (text(first), finished(first)) == (b"x\r\n", [0])
    assert text(second) == b"[1]  + done       sleep 0.1\r\ny\r\n"
    assert text(third) == b"z\r\n"  # the prompt's escapes after `second` were not kept


def test_typed_zsh_notice_after_the_end_mark_and_the_next_keys_echo_is_still_kept() -> None:
    """The next command's keys were typed at once (zle not reading yet): the tty echoes them
    (`^[[7797~<nonce>`, never output), then zsh prints the notice, then its prompt."""
    t = CommandTracker()
    prompt = b"\x1b[0m\x1b[27m\x1b[24m\x1b[J\x1b]633;A\x07vm# \x1b]633;B\x07\x1b[K"
    t.submit(N1, typed=True)
    first = run(t, *_zsh_command(N1, b"x\r\n"))
    t.submit(N2, typed=True)
    second = run(
        t,
        b"^[[7797~" + N2.encode() + b"[1]  + done       sleep 0.1\r\n" + prompt,
        *_zsh_command(N2, b"y\r\n"),
        prompt,
    )
    assert (text(first), finished(first)) == (b"x\r\n", [0])
    assert (text(second), finished(second)) == (b"[1]  + done       sleep 0.1\r\ny\r\n", [0])


def test_typed_zsh_notice_zle_began_to_print_before_the_keys_were_typed() -> None:
    """zle left its idle prompt for a job's notice (its POSTEDIT mark), then the next command
    was typed, then the notice came: it is that command's output."""
    t = CommandTracker()
    prompt = b"\x1b[0m\x1b[27m\x1b[24m\x1b[J\x1b]633;A\x07vm# \x1b]633;B\x07\x1b[K"
    t.submit(N1, typed=True)
    run(t, *_zsh_command(N1, b"x\r\n"), prompt, b"\r\r\n", p("LbEdit"))
    t.submit(N2, typed=True)
    second = run(t, b"[1]  + done       sleep 0.1\r\n" + prompt, *_zsh_command(N2, b"y\r\n"))
    assert (text(second), finished(second)) == (b"[1]  + done       sleep 0.1\r\ny\r\n", [0])
