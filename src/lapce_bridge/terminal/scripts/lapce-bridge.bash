# lapce-bridge shell integration for bash: commands typed line by line, OSC 633 marks around them.
#
# Read through `bash --init-file` (bash has already read /etc/bash.bashrc by then) or, for a
# terminal started without the user's rc files, through $ENV of `bash --posix`.
#
# How a command arrives, so that it behaves exactly as if typed at this prompt (job control
# and its notices, $0, error messages, a syntax error on one line not dropping the next): the
# bridge writes it to the file $__lb_cf, then types the new-command key, its nonce and the
# accept key. The nonce is 128 bits in 22 url-safe base64 characters, then a digit saying
# whether the command may change the exported environment (`exports.py` decides it from the
# text: 0 no, 1 yes, 2 yes and it may define functions or aliases too). The new-command key's
# function reads the nonce from the terminal (readline never inserts or draws it), reads the
# file's lines and puts the first into the edit line; the accept key then runs it as if typed. A multi-line command's file
# starts with the sizes of its groups of lines after the first (one line each, or a
# here-document's body with its delimiter line), and the bridge types the chain key instead
# of the accept key: the function binds it to a readline macro that accepts the first line
# and then, for each group, types the load key and the accept key into readline itself.
# Readline reads a macro's keys before the terminal's, each when it next reads a key (its
# next prompt, or PS2 inside a block, a quote or a heredoc): no round trip to the bridge, and
# a command reading the terminal never sees them. Those prompts print `633;P;LbNext=<nonce>`
# (hidden from the output); PS2 after the last line prints `633;P;LbCont`: the command is
# incomplete, and the bridge abandons it. The load key's function looks for the file
# `halt` first (the bridge stopped the command): then the rest is dropped and the macro
# aborted. Readline scrolls a long line instead of wrapping it, so
# the echo of a loaded line ends at the first newline after `633;P;LbEcho=<nonce>`: what
# follows is the line's output.
#
# Invariants:
# - no hook forks: no $(...), no pipes, no external commands; text is escaped with parameter
#   expansion, so a command costs microseconds of integration, not the ~2 ms of a fork;
# - the nonce and our control variables never reach the environment user commands see: the
#   nonce arrives as typed text, is printed back in E, LbEcho, LbMore and D, and is forgotten
#   at the command's end;
# - the user's ~/.bashrc, PS1, PS2, PROMPT_COMMAND (string or array) and DEBUG trap keep
#   working: ours run around theirs, and $? is handed on unchanged;
# - each line that runs is announced by C (PS0); after a command's last line come P;Cwd and
#   D;<status>;<nonce>: printed by the prompt itself when a job's notice may come (bash prints
#   those after PROMPT_COMMAND, and they are the command's output), else by PROMPT_COMMAND
#   (readline expands a prompt again when it redraws it: a short one costs less); then A;
#   B ends PS1.
# Without line editing (`bash --noediting`) nothing is installed: the bridge finds the end of
# each command with a tokened end marker instead.
if [[ -z ${__lb_installed-} ]] && [[ -o emacs || -o vi ]]; then
    __lb_installed=1
    if shopt -qo posix; then set +o posix; fi

    __lb_dir=${LAPCE_BRIDGE_DIR-}
    __lb_use_rc=${LAPCE_BRIDGE_RC-1}
    __lb_restore=${LAPCE_BRIDGE_RESTORE-}
    unset LAPCE_BRIDGE_DIR LAPCE_BRIDGE_RC LAPCE_BRIDGE_RESTORE ENV
    __lb_cf=$__lb_dir/cmd
    __lb_ef=$__lb_dir/env

    if [[ $__lb_use_rc == 1 && -r ~/.bashrc ]]; then
        . ~/.bashrc
    fi
    # The exported variables of the shell this one replaces (after a crash), over the rc's.
    if [[ -n $__lb_restore && -r $__lb_restore ]]; then
        . "$__lb_restore" 2>/dev/null
    fi
    unset __lb_restore

    __lb_n=        # the nonce of the command in flight
    __lb_lines=()  # its lines
    __lb_i=0       # how many of them the line editor was given
    __lb_status=0
    __lb_out=
    __lb_mark=     # what the next PS1 prints first: P;Cwd and D, or LbMore

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

    # The new-command key: the nonce follows it and is read here (readline would insert and
    # draw it a character at a time); the command's lines come from the file, the first goes
    # into the edit line, which the accept key then runs as if typed.
    __lb_new() {
        local n
        IFS= builtin read -r -s -N 23 n
        # (Its length only: a mark with another nonce is not trusted anyway, and a pattern
        # testing each character costs several times as much.)
        ((${#n} == 23)) || return
        __lb_n=$n
        # The lines, with one `mapfile` (a `read` of the text besides cost as much again).
        mapfile -t __lb_lines <"$__lb_cf"
        READLINE_LINE=${__lb_lines[0]-}
        if ((${#__lb_lines[@]} > 1)) ||
            [[ $READLINE_LINE == *[\\\;$'\a\e\n\r\x18\x1a']* || ${#READLINE_LINE} -ge 4096 ]]; then
            __lb_new_rare
        else
            __lb_out=$READLINE_LINE
        fi
        # One write for both marks: each write wakes the reader on the other side.
        builtin printf %s $'\e]633;E;'"$__lb_out;$n"$'\a\e]633;P;LbEcho='"$n"$'\a'
        READLINE_POINT=${#READLINE_LINE}
        __lb_i=1
    }

    # What the new-command function rarely needs (bash copies a function's whole body at
    # every call): a multi-line command's chain, and E's text escaped or left out. E shows
    # the lines joined by newlines, up to 4 KiB.
    __lb_new_rare() {
        local text=$READLINE_LINE
        if ((${#__lb_lines[@]} > 1)); then
            # Lines after the sizes of their groups (one long line has none).
            local IFS=' ' chain
            __lb_groups=(${__lb_lines[0]})
            __lb_lines=("${__lb_lines[@]:1}")
            __lb_g=0
            __lb_k=LbNext
            # The chain: accept the first line, then a load key and an accept key a
            # group (the accept key plain again if a stopped command's chain changed it).
            builtin printf -v chain '%*s' ${#__lb_groups[@]} ''
            builtin bind '"\e[7795~": accept-line' \
                "\"\\e[7796~\": \"\\e[7795~${chain// /\\e[7799~\\e[7795~}\""
            IFS=$'\n'
            text="${__lb_lines[*]}"
            READLINE_LINE=${__lb_lines[0]-}
        fi
        if ((${#text} >= 4096)); then text=; fi
        __lb_escape "$text"
    }

    # The load key (the chain's, or typed by the bridge): the command's next group of lines.
    # After "!": the rest is dropped and the continuation prompt abandoned.
    __lb_load() {
        builtin printf '\e]633;P;LbEcho=%s\a' "$__lb_n"
        if [[ $READLINE_LINE == '!' ]]; then
            # Abandon a continuation prompt in a shell that ignores SIGINT (the user's
            # `trap '' INT`), where Ctrl-C does nothing: as Ctrl-C would, with the user's
            # trap set again at the next prompt.
            __lb_i=${#__lb_lines[@]}
            builtin trap -p INT >"$__lb_dir/int"
            __lb_int=1
            READLINE_LINE=
            builtin trap - INT
            builtin kill -INT $$
            return
        fi
        if [[ -e $__lb_dir/halt ]]; then
            # Stopped: the rest is dropped. The empty line accepted next ends the command
            # (or, inside a block, shows PS2 asking to be abandoned); the chain is aborted.
            __lb_i=${#__lb_lines[@]}
            __lb_k=LbCont
            READLINE_LINE=
            builtin bind '"\e[7795~": "\e[7798~\e[7793~"'
            return
        fi
        local IFS=$'\n' n=${__lb_groups[__lb_g]-1}
        __lb_g=$((__lb_g + 1))
        READLINE_LINE="${__lb_lines[*]:__lb_i:n}"
        READLINE_POINT=${#READLINE_LINE}
        __lb_i=$((__lb_i + n))
        if ((__lb_i >= ${#__lb_lines[@]})); then __lb_k=LbCont; fi
    }

    # The names of the user's functions and aliases, for the bridge's test of whether a
    # command may change the exported environment (`exports.py`: a command naming one may),
    # listed again after a command that may have defined some (its digit is 2), and whenever
    # the environment is saved and the alias names changed. `end` tells a whole list.
    __lb_list_functions() {
        __lb_al=${!BASH_ALIASES[*]}
        {
            builtin declare -F
            builtin printf 'alias %s\n' "${!BASH_ALIASES[@]}"
            builtin printf 'end\n'
        } >"$__lb_dir/words" 2>/dev/null
        __lb_fns_stale=
    }

    # The `cwd` the bridge was asked to run a command in could not be entered: skip the rest.
    __lb_skip() {
        __lb_i=${#__lb_lines[@]}
        __lb_k=LbCont
        return 1
    }

    # bash copies a function's whole body at every call (its rare branches too): the prompt
    # hook keeps what runs after every command, and calls the rest only when it is needed.
    __lb_precmd() {
        __lb_status=$?
        if [[ -n ${__lb_int-} || -z $__lb_n || $PROMPT_COMMAND != "$__lb_pc" ||
            ${#PROMPT_COMMAND[@]} != 1 ]] || ((__lb_i < ${#__lb_lines[@]})); then
            __lb_precmd_rare || return "$__lb_status"
        elif [[ $__lb_n != *0 ]]; then
            __lb_save # (the nonce's digit: the command may have changed the environment)
        fi
        if [[ $PWD != "$__lb_pwd" ]]; then __lb_cwd; fi
        # The marks are built by assignment (`printf -v` costs several times as much).
        if [[ -n $__lb_n ]]; then
            __lb_mark=$__lb_cwd_mark$'\e]633;D;'"$__lb_status;$__lb_n"$'\a'
            __lb_n= __lb_lines=() __lb_i=0
        else
            __lb_mark=$__lb_cwd_mark
        fi
        # Without jobs no notice can come before the prompt: the marks go out now, and the
        # prompt (which readline expands again, a character at a time, when it redraws the
        # line after the new-command key) stays short. `\j` no longer counts a job that has
        # ended, whose notice is still to come: so not either when a job was counted at the
        # last prompt or one was started since (`$!` moved): the count and `$!` now, and at
        # the last prompt, are the same, and the count is 0.
        __lb_jobs_now=${__lb_jobs@P}.${!-}
        if [[ $__lb_jobs_now == "$__lb_jobs_then" && $__lb_jobs_now == 0.* ]]; then
            builtin printf %s "$__lb_mark"
            __lb_mark=
        fi
        __lb_jobs_then=$__lb_jobs_now
        return "$__lb_status"
    }

    # The cwd's mark, made again only when the cwd changed.
    __lb_cwd() {
        __lb_pwd=$PWD
        __lb_escape "$PWD"
        __lb_cwd_mark=$'\e]633;P;Cwd='$__lb_out$'\a'
    }

    # What the prompt hook rarely needs: the user's INT trap set again after an abandoned
    # continuation prompt; the next lines asked for (status 1: the hook ends there); the
    # environment saved after a prompt without a command or with the user's PROMPT_COMMAND.
    __lb_precmd_rare() {
        if [[ -n ${__lb_int-} ]]; then
            . "$__lb_dir/int"
            __lb_int=
        fi
        if [[ -n $__lb_n ]] && ((__lb_i < ${#__lb_lines[@]})); then
            __lb_mark=$'\e]633;P;LbNext='$__lb_n$'\a'
            __lb_prompt_end # (the line may have set PS1: LbNext is printed by ours)
            return 1
        fi
        if [[ -z $__lb_n || $PROMPT_COMMAND != "$__lb_pc" || ${#PROMPT_COMMAND[@]} != 1 ||
            $__lb_n != *0 ]]; then
            __lb_save
        fi
    }

    # What a replacement shell restores if this one dies (a builtin writing a file), saved
    # before the end mark so that a death right after a command still finds it; saved again
    # only when the environment may have changed (it costs as much as a bare prompt). The
    # prompts are marked again then too: a command that cannot have set a variable cannot
    # have set PS1 (the user's PROMPT_COMMAND, which may, ends with that check). Function
    # and alias names are listed again after a command that may have defined some.
    __lb_save() {
        builtin declare -x 2>/dev/null >"$__lb_ef"
        __lb_prompt_end
        if [[ -n $__lb_fns_stale || $__lb_n == *2 || ${!BASH_ALIASES[*]} != "$__lb_al" ]]; then
            __lb_list_functions
        fi
    }

    # Prompt frameworks rebuild PS1 (and PS2) in their PROMPT_COMMAND: mark them again.
    __lb_prompt_end() {
        if [[ $PS1 != "$__lb_a"* ]]; then PS1=$__lb_a$PS1; fi
        if [[ $PS1 != *"$__lb_b" ]]; then PS1=$PS1$__lb_b; fi
        if [[ $PS2 != "$__lb_f"* ]]; then PS2=$__lb_f$PS2; fi
        if [[ ${PS0-} != "$__lb_c"* ]]; then PS0=$__lb_c${PS0-}; fi
        return "$__lb_status"
    }
    # Expanded when the prompt is shown (promptvars): the marks of the moment.
    __lb_a='\[${__lb_mark}\e]633;A\a\]'
    __lb_b='\[\e]633;B\a\]'
    __lb_f='\[\e]633;P;${__lb_k}=${__lb_n}\a\]'
    __lb_k=LbCont # (LbNext while a multi-line command has lines to load)
    # PS0 is printed once a line is parsed, just before it runs: until then a SIGINT would
    # reach bash between reading the line and running it (it drops a character, runs the rest).
    __lb_c='\e]633;C\a'
    __lb_jobs='\j' # how many jobs the shell has (a prompt escape: no fork)
    __lb_jobs_then=0.${!-}
    __lb_cwd

    # Commands come from a program, not a person's history: `!` is just a character.
    set +H
    builtin bind 'set horizontal-scroll-mode on' 'set enable-bracketed-paste off' 2>/dev/null
    for __lb_km in emacs vi-insert; do
        builtin bind -m "$__lb_km" -x '"\e[7799~": __lb_load' 2>/dev/null
        builtin bind -m "$__lb_km" -x '"\e[7797~": __lb_new' 2>/dev/null
        builtin bind -m "$__lb_km" '"\e[7798~": accept-line' '"\e[7795~": accept-line' \
            '"\e[7793~": abort' 2>/dev/null
    done
    unset __lb_km

    # With no PROMPT_COMMAND of the user's, one call (the string is parsed at every prompt).
    # `__lb_pc` is our own value: another one means the user's hooks run at each prompt too,
    # and may export anything, so the environment is then saved after every command.
    if ((${#PROMPT_COMMAND[@]} > 1)); then
        PROMPT_COMMAND=(__lb_precmd "${PROMPT_COMMAND[@]}" __lb_prompt_end)
    elif [[ -n ${PROMPT_COMMAND-} ]]; then
        PROMPT_COMMAND="__lb_precmd
$PROMPT_COMMAND
__lb_prompt_end"
    else
        PROMPT_COMMAND=__lb_precmd
    fi
    __lb_pc=__lb_precmd
    __lb_al=
    __lb_fns_stale=1
fi
