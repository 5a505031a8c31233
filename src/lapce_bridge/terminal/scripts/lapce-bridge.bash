# lapce-bridge shell integration for bash: OSC 633 markers around every command.
#
# Read through `bash --init-file` (bash has already read /etc/bash.bashrc by then) or, for a
# terminal started without the user's rc files, through $ENV of `bash --posix`.
#
# Invariants:
# - no hook forks: no $(...), no pipes, no external commands; text is escaped with parameter
#   expansion, so a command costs microseconds of integration, not the ~2 ms of a fork;
# - the nonce and our control variables never reach the environment user commands see: each
#   command's nonce arrives as typed text (`__lb_n=<nonce>; . "$__lb_cf"`), is printed back
#   in E and D, and is forgotten at the next prompt;
# - the user's ~/.bashrc, PS1, PROMPT_COMMAND (string or array) and DEBUG trap keep working:
#   ours run around theirs, and $? is handed on unchanged;
# - after every command: P;Cwd, then D;<status>;<nonce>, then A; the prompt ends with B.
if [[ -z ${__lb_installed-} ]]; then
    __lb_installed=1
    if shopt -qo posix; then set +o posix; fi

    __lb_nonce=
    __lb_dir=${LAPCE_BRIDGE_DIR-}
    __lb_use_rc=${LAPCE_BRIDGE_RC-1}
    __lb_restore=${LAPCE_BRIDGE_RESTORE-}
    unset LAPCE_BRIDGE_DIR LAPCE_BRIDGE_RC LAPCE_BRIDGE_RESTORE ENV
    __lb_cf=$__lb_dir/cmd
    __lb_ef=$__lb_dir/env
    __lb_run_line='. "$__lb_cf"'

    if [[ $__lb_use_rc == 1 && -r ~/.bashrc ]]; then
        . ~/.bashrc
    fi
    # The exported variables of the shell this one replaces (after a crash), over the rc's.
    if [[ -n $__lb_restore && -r $__lb_restore ]]; then
        . "$__lb_restore" 2>/dev/null
    fi
    unset __lb_restore

    __lb_phase=pc  # pc: PROMPT_COMMAND running; prompt: waiting for input; run: command running
    __lb_status=0
    __lb_out=

    # OSC 633 value escaping: backslash, ';' and the bytes that would end or abort the sequence.
    __lb_escape() {
        __lb_out=$1
        if [[ $__lb_out == *[\\\;$'\a\e\n\r\x18\x1a']* ]]; then
            __lb_out=${__lb_out//\\/\\\\}
            __lb_out=${__lb_out//;/\\x3b}
            __lb_out=${__lb_out//$'\a'/\\x07}
            __lb_out=${__lb_out//$'\e'/\\x1b}
            __lb_out=${__lb_out//$'\n'/\\x0a}
            __lb_out=${__lb_out//$'\r'/\\x0d}
            __lb_out=${__lb_out//$'\x18'/\\x18}
            __lb_out=${__lb_out//$'\x1a'/\\x1a}
        fi
    }

    __lb_preexec() {
        local cmd=$BASH_COMMAND
        if [[ ${cmd# } == "$__lb_run_line" && -r $__lb_cf ]]; then
            # The command we were given, not the line that sources it (bounded: 4 KiB).
            local text=
            IFS= builtin read -r -d '' -N 4096 text <"$__lb_cf"
            if ((${#text} < 4096)); then cmd=$text; fi
        fi
        __lb_escape "$cmd"
        builtin printf '\e]633;E;%s;%s\a\e]633;C\a' "$__lb_out" "$__lb_nonce"
    }

    __lb_debug() {
        if [[ $__lb_phase == prompt && -z ${COMP_LINE-} && $BASH_COMMAND != __lb_precmd ]]; then
            if [[ $BASH_COMMAND == __lb_n=* ]]; then
                # Our typed line's first part: the command's nonce, then the command itself.
                __lb_nonce=${BASH_COMMAND#__lb_n=}
                return 0
            fi
            __lb_phase=run
            __lb_preexec
        fi
        if [[ -n $__lb_prev_debug ]]; then
            eval "$__lb_prev_debug"
            return
        fi
        return 0  # under extdebug a non-zero status would skip the command
    }

    __lb_precmd() {
        __lb_status=$?
        __lb_phase=pc
        # What a replacement shell restores if this one dies (a builtin writing a file), saved
        # before the end mark so that a death right after a command still finds it.
        builtin declare -x 2>/dev/null >"$__lb_ef"
        __lb_escape "$PWD"
        # One write for all the marks: each write wakes the reader on the other side. The
        # nonce comes from the typed line's assignment even when the DEBUG trap is gone.
        if [[ -n ${__lb_n-} ]]; then
            builtin printf '\e]633;P;Cwd=%s\a\e]633;D;%s;%s\a\e]633;A\a' \
                "$__lb_out" "$__lb_status" "$__lb_n"
            builtin unset __lb_n
            __lb_nonce=
        else
            builtin printf '\e]633;P;Cwd=%s\a\e]633;A\a' "$__lb_out"
        fi
        return "$__lb_status"
    }

    __lb_prompt_end() {
        # Prompt frameworks rebuild PS1 in their PROMPT_COMMAND: mark its end again.
        if [[ $PS1 != *"$__lb_b" ]]; then
            PS1=$PS1$__lb_b
        fi
        __lb_phase=prompt
        return "$__lb_status"
    }
    __lb_b='\[\e]633;B\a\]'

    # Chain an existing DEBUG trap (a fork here is once per shell, not per command).
    __lb_prev_debug=$(builtin trap -p DEBUG)
    if [[ -n $__lb_prev_debug ]]; then
        __lb_prev_debug=${__lb_prev_debug#"trap -- '"}
        __lb_prev_debug=${__lb_prev_debug%"' DEBUG"}
        __lb_prev_debug=${__lb_prev_debug//"'\\''"/"'"}
    fi

    if ((${#PROMPT_COMMAND[@]} > 1)); then
        PROMPT_COMMAND=(__lb_precmd "${PROMPT_COMMAND[@]}" __lb_prompt_end)
    else
        PROMPT_COMMAND="__lb_precmd${PROMPT_COMMAND:+
$PROMPT_COMMAND}
__lb_prompt_end"
    fi
    builtin trap '__lb_debug' DEBUG
fi
