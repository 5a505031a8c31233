"""Shell detection, the environment every terminal gets, and the lines sent to shells."""

from __future__ import annotations

import base64

import pytest

from lapce_bridge.terminal.exec_cmd import exit_status
from lapce_bridge.terminal.modes import (
    LOAD_KEY,
    NEW_KEY,
    AsTypedErrors,
    build_env,
    load_groups,
    load_keys,
    prompt_filter,
    run_line,
    shell_kind,
    typed,
    typed_secret,
    typed_text,
)
from lapce_bridge.terminal.result import ExecResult, Mode, Recovery, Status
from lapce_bridge.terminal.tracker import EndDetection
from lapce_bridge.terminal.waiting import command_file_text


@pytest.mark.parametrize(
    ("shell", "kind"),
    [
        ("bash", "bash"),
        ("/usr/local/bin/bash", "bash"),
        ("bash-5.2", "bash"),
        ("/bin/zsh", "zsh"),
        ("fish", "fish"),
        ("/bin/sh", "posix"),
        ("dash", "posix"),
        ("ksh", "posix"),
        ("bashful", "posix"),
    ],
)
def test_shell_kind(shell: str, kind: str) -> None:
    assert shell_kind(shell) == kind


def test_terminal_environment() -> None:
    base = {"PATH": "/bin", "TERM": "dumb", "PAGER": "less", "LAPCE_BRIDGE_NONCE": "leak"}
    env = build_env(base, {"EXTRA": "1"})
    assert env["PAGER"] == "cat"
    assert env["GIT_PAGER"] == "cat"
    assert env["GIT_EDITOR"] == ":"
    assert env["TERM"] == "xterm-256color"
    assert env["EXTRA"] == "1"
    assert "LAPCE_BRIDGE_NONCE" not in env
    assert build_env(base, {"TERM": "vt100", "PAGER": "more"})["TERM"] == "vt100"
    assert build_env(base, {"PAGER": "more"})["PAGER"] == "more"


def test_typed_shells_get_the_nonce_and_keys_only() -> None:
    path = "/x/cmd"
    nonce = "0123abcd" * 4
    integration = EndDetection.INTEGRATION
    # bash: the new-command key (a `bind -x` function), the nonce it reads (readline never
    # inserts or draws it) and the accept key; zsh: the new-command key and the nonce its
    # widget reads; zsh's widget and fish's bound function accept as they load. No command
    # text, no newline: nothing for the tty to echo or cut.
    assert run_line("bash", integration, path, nonce) == NEW_KEY + nonce.encode() + b"\x1b[7798~"
    assert run_line("zsh", integration, path, nonce) == NEW_KEY + nonce.encode()
    assert load_keys("zsh") == LOAD_KEY
    assert load_keys("bash", "-").startswith(b"-" + LOAD_KEY)
    assert typed("bash", integration)
    assert typed("zsh", integration)
    assert typed("fish", integration)
    assert not typed("bash", EndDetection.END_MARKER)
    assert not typed("fish", EndDetection.END_MARKER)
    # fish: the new-command key (a bind mode of ours for the nonce), the nonce, the load key;
    # its nonce is the same 128 bits in 22 url-safe base64 characters (a key less is work less).
    assert run_line("fish", integration, path, nonce) == NEW_KEY + nonce.encode() + LOAD_KEY
    short = typed_secret("fish", nonce)
    assert (len(short), base64.urlsafe_b64decode(short + "==").hex()) == (22, nonce)
    # (bash and zsh: the bridge adds `exports.may_export`'s digit)
    assert typed_secret("bash", nonce) == typed_secret("zsh", nonce) == short
    assert typed_secret("posix", nonce) == nonce  # an end-marker token
    assert load_keys("fish", "-") == b"-" + LOAD_KEY


def test_a_multi_line_command_is_typed_once_with_its_groups_in_the_file() -> None:
    nonce = "0123abcd" * 4
    integration = EndDetection.INTEGRATION
    # bash: the chain key (the macro that accepts the first line, then loads the others)
    # instead of the accept key; zsh: the same keys (its line-init hook loads the others).
    assert run_line("bash", integration, "/x", nonce, 3).endswith(b"\x1b[7796~")
    assert run_line("bash", integration, "/x", nonce, 1).endswith(b"\x1b[7798~")
    assert run_line("zsh", integration, "/x", nonce, 3) == NEW_KEY + nonce.encode()
    text = "cat <<EOF\na\nEOF\necho x\n"
    assert typed_text("bash", text) == "2 1\n" + text  # the groups after the first line
    assert typed_text("zsh", text) == "2 1\n" + text
    assert typed_text("bash", "echo one\n") == "echo one\n"  # one line: no groups
    assert typed_text("fish", text) == text  # fish asks for each line


def test_fallback_lines_carry_the_token_as_text_only() -> None:
    path = "/x/it's/cmd"
    line = run_line("posix", EndDetection.END_MARKER, path, "tok123")
    assert b"\x1b" not in line  # the tty's echo of the line holds no escape sequence
    assert line.count(b"\n") == 2  # dash: the end mark survives a syntax error in line one
    assert b"LbStart=tok123" in line
    assert b"LbEnd=%s:tok123" in line
    assert b"'/x/it'\\''s/cmd'" in line
    bash_line = run_line("bash", EndDetection.END_MARKER, path, "tok123")
    assert bash_line.count(b"\n") == 1  # readline echoes a second line inside the output
    fish_line = run_line("fish", EndDetection.END_MARKER, path, "tok123")
    assert b"$status" in fish_line
    assert b"source '/x/it\\'s/cmd'" in fish_line


def test_cwd_prefix_stops_the_command_when_cd_fails() -> None:
    assert command_file_text("bash", "ls", None) == "ls"
    # Typed line by line: lines end in a newline (CRLF too) and a failed cd skips the rest.
    assert command_file_text("bash", "ls\r\npwd", None, typed=True) == "ls\npwd\n"
    assert command_file_text("zsh", "ls", "/a", typed=True) == "cd -- '/a' || __lb_skip\nls\n"
    assert command_file_text("bash", "ls", "/a b/c'd") == "cd -- '/a b/c'\\''d' || return 1\nls"
    assert command_file_text("fish", "ls", "/a'b") == "cd '/a\\'b'; or return 1\nls"
    typed_fish = command_file_text("fish", "ls", "/a'b", True)
    assert typed_fish == "cd '/a\\'b'; or __lb_skip\nls\n"


def _result(status: Status, code: int | None) -> ExecResult:
    return ExecResult("e", "t", code, "", 0, False, None, 1.0, status, Mode.SHELL_INTEGRATION,
                      "bash", (Recovery("a", "b"),))  # fmt: skip


def test_exec_exit_status() -> None:
    assert exit_status(_result(Status.COMPLETED, 0)) == 0
    assert exit_status(_result(Status.COMPLETED, 3)) == 3
    assert exit_status(_result(Status.COMPLETED, 256 + 7)) == 7
    assert exit_status(_result(Status.TIMED_OUT, 130)) == 124
    assert exit_status(_result(Status.INTERRUPTED, None)) == 130
    assert exit_status(_result(Status.INTERRUPTED, 4)) == 4  # `exit 4` ended the shell
    assert exit_status(_result(Status.COMPLETED, None)) == 1


def test_wire_form_uses_protocol_names() -> None:
    wire = _result(Status.WAITING_FOR_INPUT, None).to_wire()
    assert wire["status"] == "waiting_for_input"
    assert wire["recoveries"] == [{"action": "a", "reason": "b"}]
    assert wire["exitCode"] is None
    assert list(wire) == [
        "executionId", "terminalId", "exitCode", "output", "outputBytes", "truncated", "cwd",
        "durationMs", "status", "mode", "shell", "recoveries",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("lines", "groups"),
    [
        (["echo a", "echo b"], [1, 1]),
        # a here-document's body and its delimiter line go in one load
        (["cat > f <<EOF", "a", "b", "EOF", "echo done"], [1, 3, 1]),
        (["cat <<'E O'", "$x", "E O"], [1, 2]),
        (['cat << "EOF"', "x", "EOF"], [1, 2]),
        (["cat <<\\EOF", "x", "EOF"], [1, 2]),
        # <<- strips leading tabs from the delimiter line
        (["cat <<-X", "\ta", "\tX", "b"], [1, 2, 1]),
        # two on one line: both bodies, in order
        (["cat <<A <<B", "1", "A", "2", "B", "echo"], [1, 4, 1]),
        # inside a block
        (["if true; then", "cat <<EOF", "x", "EOF", "fi"], [1, 1, 2, 1]),
        # not here-documents: a here-string, a shift, a delimiter that never comes
        (["cat <<< hi", "hi"], [1, 1]),
        (["echo $((1<<2))", "2"], [1, 1]),
        (["cat <<EOF", "a", "b"], [1, 1, 1]),
        (["cat <<EOF", "EOFX", "EOF "], [1, 1, 1]),
    ],
)
def test_load_groups_hand_a_heredoc_over_in_one_load(lines: list[str], groups: list[int]) -> None:
    assert load_groups(lines) == groups
    assert sum(groups) == len(lines)


def test_fish_prompt_drawing_is_dropped_from_what_fish_writes() -> None:
    line = b"\x1b[2m\xe2\x8f\x8e\x1b(B\x1b[m" + b" " * 119 + b"\r\xe2\x8f\x8e \r\x1b[K"
    prompt = b"\x1b[30m\x1b(B\x1b[m\x1b]633;A\x07$ \x1b[K\r\x1b[C\x1b[C"
    strip = prompt_filter("fish")
    assert strip is not None
    # The prompt-start mark stays (it says the prompt is back); the drawing goes.
    assert strip(b"after\r\n" + line + prompt) == (
        b"after\r\n\x1b[2m\x1b[30m\x1b(B\x1b[m\x1b]633;A\x07"
    )
    kept = "a \u23ce and a $ in output\r\n".encode()
    assert strip(kept) == kept
    assert prompt_filter("bash") is None


@pytest.mark.parametrize(
    ("kind", "sourced", "typed_text"),
    [
        # (what each shell printed for the sourced file here; what it prints typed)
        (
            "bash",
            "bash: F: line 2: syntax error near unexpected token `then'\n"
            "bash: F: line 2: `if then fi'\nbash: x: command not found\n",
            "bash: syntax error near unexpected token `then'\nbash: x: command not found\n",
        ),
        (
            "zsh",
            "F:1: command not found: x\nF:cd:2: no such file or directory: /n\n",
            "zsh: command not found: x\ncd: no such file or directory: /n\n",
        ),
        (
            "fish",
            "F (line 1): Unexpected ')' for unopened parenthesis\necho )\n     ^\n"
            "from sourcing file F\nsource: Error while reading file 'F'\n",
            "fish: Unexpected ')' for unopened parenthesis\necho )\n     ^\n",
        ),
        (
            "posix",
            'dash: 1: F: Syntax error: "then" unexpected\n',
            'dash: 1: Syntax error: "then" unexpected\n',
        ),
    ],
)
def test_a_sourced_commands_errors_name_the_shell_as_typed(
    kind: str, sourced: str, typed_text: str
) -> None:
    path = "/dev/shm/lapce-bridge-0/terminals/t1-ab/cmd"
    name = "dash" if kind == "posix" else kind
    text = sourced.replace("F", path)
    rename = AsTypedErrors(kind, path, name)
    assert rename(text) + rename.flush() == typed_text
    # Split anywhere (two reads of one message), the same.
    for cut in range(len(text) + 1):
        rename = AsTypedErrors(kind, path, name)
        assert rename(text[:cut]) + rename(text[cut:]) + rename.flush() == typed_text
    # Text that does not name this terminal's file is left alone, and not held.
    other = sourced.replace("F", "/elsewhere/cmd")
    assert AsTypedErrors(kind, path, name)(other) == other
    assert AsTypedErrors(kind, path, name)("Password: ") == "Password: "
