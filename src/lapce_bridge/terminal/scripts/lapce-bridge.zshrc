# lapce-bridge shell integration for zsh, part 2: installed as $ZDOTDIR/.zshrc.
#
# How a command arrives, so that it behaves exactly as if typed at this prompt (job numbers
# and notices, $0, error messages naming zsh, a syntax error on one line not dropping the
# next): the bridge writes it to the file $__lb_cf, then types the new-command key and its
# nonce: 128 bits in 22 url-safe base64 characters, then a digit saying whether the command
# may change the exported environment (`exports.py` decides it from the text: 0 no, 1 yes,
# 2 yes and it may define functions or aliases too). The new-command widget reads the nonce
# from the terminal (zle never inserts or draws it), reads the file's lines, puts the first
# into the buffer and accepts it as if typed. A multi-line command's file starts with the
# sizes of its groups of lines after the first (one line each, or a here-document's body
# with its delimiter line): while it runs,
# our `zle-line-init` widget (around the user's) puts the next group into the buffer and
# accepts it each time zsh asks for a line (its next prompt, or PS2 inside a block, a quote
# or a heredoc), with no round trip to the bridge; precmd prints `633;P;LbNext=<nonce>` before
# those prompts, PS2 starts with it (hidden from the output), and with `633;P;LbCont` after the
# last line: the command is incomplete, and the bridge abandons it. The widget looks for the
# file `halt` first (the bridge stopped the command): the rest is then dropped. The widgets
# print `633;P;LbZle=<nonce>`, and POSTEDIT `633;P;LbEdit` as zle finishes the line: what
# follows is that line's output.
#
# Invariants:
# - no hook forks: no $(...), no external commands; escaping is parameter expansion;
# - the nonce and our control variables never reach the environment user commands see: the
#   nonce arrives as typed text, is printed back in E, LbNext and D, and is forgotten at the
#   command's end;
# - the user's .zshrc, prompt and hooks keep working: our precmd runs first (it needs $?),
#   the prompt-end mark is added last (prompt frameworks rebuild PS1 in their precmd);
# - after a command's last line: P;Cwd, then D;<status>;<nonce>; the prompt starts with A and
#   ends with B.
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
typeset -g __lb_out=
typeset -g __lb_pwd=$'\0' __lb_cwd_mark=  # the cwd of the last prompt, and its mark
typeset -g __lb_n=        # the nonce of the command in flight
typeset -ga __lb_lines    # its lines
typeset -gi __lb_i=0      # how many of them zle was given
typeset -ga __lb_groups   # a multi-line command's groups of lines after the first
typeset -gi __lb_g=0      # how many of them zle was given
typeset -g __lb_chain=    # set while our zle-line-init loads them
typeset -g __lb_ps2=      # the user's PS2, while ours asks for lines
typeset -g __lb_a=$'%{\e]633;A\a%}'
typeset -g __lb_b=$'%{\e]633;B\a%}'
# The "%" mark and the carriage return zsh prints before a prompt would land inside the output
# of a command that does not end in a newline.
setopt no_prompt_sp no_prompt_cr
# Commands come from a program, not a person's history: `!` is just a character.
setopt no_bang_hist

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

# The new-command key: the nonce follows it and is read here (zle would insert and draw it a
# character at a time, a write each); the command's lines come from the file (`$(<file)`
# reads it whole without a fork, where `read` takes a byte a call), the first goes into the
# buffer and is accepted as if typed.
__lb_new() {
    local n= text=
    builtin read -k 23 n
    (( ${#n} == 23 )) || return  # (a pattern costs zsh several times as much)
    __lb_n=$n
    text=$(<$__lb_cf)
    __lb_lines=("${(@f)text}")
    __lb_i=1
    __lb_ps2=$PS2
    if (( ${#__lb_lines} > 1 )); then
        # Lines after the sizes of their groups (one long line has none), loaded by our
        # zle-line-init widget; the user's one, if any, is called from it.
        __lb_groups=(${(s: :)__lb_lines[1]})
        shift __lb_lines
        text=${text#*$'\n'}
        __lb_g=0
        if (( ${+widgets[zle-line-init]} )); then
            zle -A zle-line-init __lb_user_line_init
        fi
        zle -N zle-line-init __lb_next
        __lb_chain=1
        PS2=$'%{\e]633;P;LbNext='$n$'\a%}'$__lb_ps2
    else
        # A continuation prompt asks for the command to be abandoned (and is hidden from the
        # output): at its start, before zle draws anything.
        PS2=$'%{\e]633;P;LbCont='$n$'\a%}'$__lb_ps2
    fi
    if (( ${#text} >= 4096 )); then
        __lb_out=
    elif [[ $text == *[\\\;$'\a\e\n\r\x18\x1a']* ]]; then
        __lb_escape "$text"
    else
        __lb_out=$text
    fi
    BUFFER=${__lb_lines[1]-}
    CURSOR=${#BUFFER}
    # One write for both marks: each write wakes the reader on the other side.
    builtin print -rn -- $'\e]633;E;'"$__lb_out;$n"$'\a\e]633;P;LbZle='"$n"$'\a'
    zle .accept-line
}

# The command's next group of lines into the buffer, accepted as if typed.
__lb_step() {
    local n=${__lb_groups[__lb_g + 1]:-1}
    __lb_g+=1
    BUFFER=${(pj:\n:)__lb_lines[__lb_i + 1, __lb_i + n]}
    CURSOR=${#BUFFER}
    __lb_i+=n
    if (( __lb_i >= ${#__lb_lines} )); then
        PS2=$'%{\e]633;P;LbCont='$__lb_n$'\a%}'$__lb_ps2
    fi
    builtin printf '\e]633;P;LbZle=%s\a' "$__lb_n"
    zle .accept-line
}

# zle-line-init while a multi-line command runs: its next lines, unless it was stopped (then
# the rest is dropped: an empty line ends it, and a continuation prompt is given up).
__lb_next() {
    if (( ${+widgets[__lb_user_line_init]} )); then
        zle __lb_user_line_init
    fi
    [[ -n $__lb_n ]] && (( __lb_i < ${#__lb_lines} )) || return
    if [[ -e $__lb_dir/halt ]]; then
        __lb_i=${#__lb_lines}
        if [[ $CONTEXT == cont ]]; then
            zle .send-break
            return
        fi
        BUFFER=
        builtin printf '\e]633;P;LbZle=%s\a' "$__lb_n"
        zle .accept-line
        return
    fi
    __lb_step
}

# The user's zle-line-init back (after a multi-line command).
__lb_unchain() {
    __lb_chain=
    if (( ${+widgets[__lb_user_line_init]} )); then
        zle -A __lb_user_line_init zle-line-init
        zle -D __lb_user_line_init
    else
        zle -D zle-line-init
    fi
}

# The load key, typed by the bridge: the command's next group of lines. After "!": the rest
# is dropped and the continuation prompt abandoned.
__lb_load() {
    if [[ $BUFFER == '!' ]]; then
        # Abandon a continuation prompt in a shell that ignores SIGINT (the user's
        # `trap '' INT`), where Ctrl-C does nothing: as Ctrl-C would, with the user's trap
        # set again at the next prompt.
        __lb_i=${#__lb_lines}
        builtin trap >|"$__lb_dir/int"
        __lb_int=1
        BUFFER=
        builtin trap - INT
        builtin kill -INT $$
        return
    fi
    __lb_step
}

# The names of the user's functions and aliases, for the bridge's test of whether a command
# may change the exported environment (`exports.py`: a command naming one may), listed again
# after a command that may have defined some (its digit is 2), and whenever the environment
# is saved and their numbers changed. `end` tells a whole list.
typeset -g __lb_counts= __lb_hook_fns=000
__lb_list_words() {
    __lb_counts=${#functions}.${#aliases}.${#galiases}
    # Hook functions of the user's (defining one makes the command's digit 2, or changes the
    # number of functions): the environment is then saved after every command.
    __lb_hook_fns=${+functions[precmd]}${+functions[preexec]}${+functions[chpwd]}
    {
        print -rl -- "declare -f "${^${(k)functions}} "alias "${^${(k)aliases}} \
            "alias "${^${(k)galiases}} end
    } >|"$__lb_dir/words" 2>/dev/null
}

# The `cwd` the bridge was asked to run a command in could not be entered: skip the rest.
__lb_skip() {
    __lb_i=${#__lb_lines}
    PS2=$'%{\e]633;P;LbCont='$__lb_n$'\a%}'$__lb_ps2
    return 1
}

__lb_precmd() {
    local st=$?
    if [[ -n ${__lb_int-} ]]; then
        . "$__lb_dir/int"
        __lb_int=
    fi
    if [[ -n $__lb_n ]] && (( __lb_i < ${#__lb_lines} )); then
        # More lines to come, which zle-line-init loads (the prompt is not output).
        builtin printf '\e]633;P;LbNext=%s\a' "$__lb_n"
        return st
    fi
    if [[ -n $__lb_chain ]]; then
        __lb_unchain
    fi
    # What a replacement shell restores if this one dies (a builtin writing a file), saved
    # before the end mark so that a death right after a command still finds it; saved again
    # only when the environment may have changed (it costs about as much as a bare prompt).
    # Hooks of the user's that run around every command (precmd, preexec, chpwd) may export
    # anything: any hook arrays but ours as set below, or hook functions. The prompt is
    # marked again then too (a command that cannot have set a variable cannot have set PS1;
    # after the user's precmd hooks, `__lb_prompt_end` does it). The nonce's last digit
    # says whether the command may have changed the environment.
    if [[ -z $__lb_n || $__lb_n != *0 || $__lb_hook_fns != 000 ||
        "$precmd_functions|$preexec_functions|$chpwd_functions" != "__lb_precmd|__lb_preexec|" ]]
    then
        builtin export -p >|"$__lb_ef" 2>/dev/null
        __lb_prompt_end
        if [[ $__lb_n == *2 || ${#functions}.${#aliases}.${#galiases} != $__lb_counts ]]; then
            __lb_list_words
        fi
    fi
    # The cwd's mark, made again only when the cwd changed.
    if [[ $PWD != "$__lb_pwd" ]]; then
        __lb_pwd=$PWD
        __lb_escape "$PWD"
        __lb_cwd_mark=$'\e]633;P;Cwd='$__lb_out$'\a'
    fi
    # One write for all the marks: each write wakes the reader on the other side. The cwd
    # comes at every prompt, just before the end mark: a P;Cwd that any program may print
    # between commands is always overwritten by the shell's own.
    if [[ -n $__lb_n ]]; then
        builtin print -rn -- "$__lb_cwd_mark"$'\e]633;D;'"$st;$__lb_n"$'\a'
        __lb_n=
        __lb_lines=()
        __lb_i=0
        PS2=$__lb_ps2
    else
        builtin print -rn -- "$__lb_cwd_mark"
    fi
    return st
}

# A line parsed is about to run: from now on a SIGINT reaches the command, not zle.
__lb_preexec() {
    builtin print -rn -- $'\e]633;C\a'
}

# The prompt starts with A and ends with B, also when zle redraws it after a job's notice.
__lb_prompt_end() {
    if [[ $PS1 != "$__lb_a"* ]]; then
        PS1=$__lb_a$PS1
    fi
    if [[ $PS1 != *"$__lb_b" ]]; then
        PS1=$PS1$__lb_b
    fi
}

# Without zle (`zsh +Z`) nothing is installed: the bridge finds the end of each command with
# a tokened end marker instead.
if [[ -o zle ]]; then
    typeset -ga precmd_functions preexec_functions
    preexec_functions=(${preexec_functions:#__lb_preexec} __lb_preexec)
    precmd_functions=(__lb_precmd ${precmd_functions:#__lb_*})
    # The user's precmd hooks (a prompt framework) may build PS1 anew: marked after them.
    if (( ${#precmd_functions} > 1 )); then
        precmd_functions+=(__lb_prompt_end)
    fi
    POSTEDIT=${POSTEDIT-}$'\e]633;P;LbEdit\a'
    zle -N __lb_load
    zle -N __lb_new
    for __lb_km in emacs viins main; do
        bindkey -M $__lb_km $'\e[7799~' __lb_load
        bindkey -M $__lb_km $'\e[7797~' __lb_new
    done
    unset __lb_km
fi
