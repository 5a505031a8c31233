# lapce-bridge shell integration for zsh, part 2: installed as $ZDOTDIR/.zshrc.
#
# Invariants:
# - no hook forks: no $(...), no external commands; escaping is parameter expansion;
# - the nonce and our control variables never reach the environment user commands see: each
#   command's nonce arrives as typed text (`__lb_n=<nonce>; . "$__lb_cf"`), is printed back
#   in E and D, and is forgotten at the next prompt;
# - the user's .zshrc, prompt and hooks keep working: our precmd runs first (it needs $?),
#   the prompt-end mark is added last (prompt frameworks rebuild PS1 in their precmd);
# - after every command: P;Cwd, then D;<status>;<nonce>, then A; the prompt ends with B.
if [[ -n ${__lb_user_zdotdir+x} ]]; then
    ZDOTDIR=$__lb_user_zdotdir
else
    unset ZDOTDIR
fi
unset __lb_user_zdotdir __lb_zdotdir

typeset -g __lb_dir=${LAPCE_BRIDGE_DIR-}
typeset -g __lb_use_rc=${LAPCE_BRIDGE_RC-1}
typeset -g __lb_restore=${LAPCE_BRIDGE_RESTORE-}
unset LAPCE_BRIDGE_DIR LAPCE_BRIDGE_RC LAPCE_BRIDGE_RESTORE

if [[ $__lb_use_rc == 1 && -r ${ZDOTDIR:-$HOME}/.zshrc ]]; then
    . "${ZDOTDIR:-$HOME}/.zshrc"
fi
if [[ -n $__lb_restore && -r $__lb_restore ]]; then
    . "$__lb_restore" 2>/dev/null
fi
unset __lb_restore

typeset -g __lb_cf=$__lb_dir/cmd
typeset -g __lb_ef=$__lb_dir/env
typeset -g __lb_run_tail='; . "$__lb_cf"'
typeset -g __lb_out=
typeset -g __lb_b=$'%{\e]633;B\a%}'
# The "%" mark and the carriage return zsh prints before a prompt would land inside the output
# of a command that does not end in a newline.
setopt no_prompt_sp no_prompt_cr

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

__lb_precmd() {
    local st=$?
    # What a replacement shell restores if this one dies (a builtin writing a file), saved
    # before the end mark so that a death right after a command still finds it.
    builtin export -p >|"$__lb_ef" 2>/dev/null
    __lb_escape "$PWD"
    # One write for all the marks: each write wakes the reader on the other side. The
    # nonce comes from the typed line's assignment even when preexec did not run.
    if [[ -n ${__lb_n-} ]]; then
        builtin printf '\e]633;P;Cwd=%s\a\e]633;D;%s;%s\a\e]633;A\a' \
            "$__lb_out" "$st" "$__lb_n"
        builtin unset __lb_n
    else
        builtin printf '\e]633;P;Cwd=%s\a\e]633;A\a' "$__lb_out"
    fi
    return st
}

__lb_prompt_end() {
    if [[ $PS1 != *"$__lb_b" ]]; then
        PS1=$PS1$__lb_b
    fi
}

__lb_preexec() {
    local cmd=$1 nonce=
    if [[ $cmd == __lb_n=*"$__lb_run_tail" ]]; then
        # Our typed line: the nonce is in it (the assignment has not run yet).
        nonce=${${cmd#__lb_n=}%"$__lb_run_tail"}
        cmd=
        if [[ -r $__lb_cf ]]; then
            local text=
            IFS= builtin read -r -d '' text <"$__lb_cf"
            if (( ${#text} < 4096 )); then cmd=$text; fi
        fi
    fi
    __lb_escape "$cmd"
    builtin printf '\e]633;E;%s;%s\a\e]633;C\a' "$__lb_out" "$nonce"
}

typeset -ga precmd_functions preexec_functions
precmd_functions=(__lb_precmd ${precmd_functions:#__lb_*} __lb_prompt_end)
preexec_functions=(${preexec_functions:#__lb_preexec} __lb_preexec)
