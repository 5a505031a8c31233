# lapce-bridge shell integration for fish: read through `fish --init-command`, after config.fish.
#
# How a command arrives, so that it behaves exactly as if typed at this prompt (job control,
# $status, error messages naming fish, a syntax error on one line not dropping the next): the
# bridge writes it to the file $__lb_cf, then types the new-command key, its nonce (128 bits in
# 22 url-safe base64 characters: fish pays for each typed key) and the load key.
# The load key's function takes the nonce from the edit buffer, reads the file's lines and puts
# the first into the buffer, then lets fish's reader run it (`commandline -f execute`) as if
# Enter had been pressed. Whenever fish is ready for another line while lines remain, a mark
# asks the bridge for it and the bridge types the load key again:
# - after a line ran, fish_postexec prints `633;P;LbMore=<nonce>`;
# - fish has no continuation prompt: a line that leaves the buffer incomplete (inside a block
#   or a quote) is kept in the buffer, as Enter would, and the next lines are added to it
#   (after a newline) until it is complete; still incomplete after the last line, the
#   function prints `633;P;LbCont=<nonce>` and the bridge abandons it;
# - a line with a syntax error is not run, as at fish's prompt: fish's own message for it is
#   printed (`fish -n`, fork only then) and the line leaves the buffer, as it does when a user
#   clears it to type the next one; `$status` is left as it was.
# Each line that runs starts with `633;P;LbZle=<nonce>` and `633;P;LbEdit` (the end of the
# line editor's echo: what follows is output) and `633;C`, all printed by fish_preexec.
#
# Invariants:
# - no hook forks: escaping and file reads use builtins only (fish runs builtins and command
#   substitutions of builtins in-process);
# - the nonce and our control variables never reach the environment user commands see: each
#   command's nonce arrives as typed text, is printed back in E, LbZle, LbMore and D, and is
#   forgotten at the command's end;
# - after a command's last line: P;Cwd, then D;<status>;<nonce>, then A at the prompt;
# - the exported environment is saved (for a replacement shell) before the end mark of every
#   command that changed it, and only then: a change to an exported variable fires our
#   `--on-variable` handler, which watches every name exported at the last save, and a name
#   exported since shows in their count (`set -nx`).
if not set -q __lb_installed
    set -g __lb_installed 1
    set -g __lb_dir "$LAPCE_BRIDGE_DIR"
    set -g __lb_restore "$LAPCE_BRIDGE_RESTORE"
    set -e LAPCE_BRIDGE_DIR
    set -e LAPCE_BRIDGE_RC
    set -e LAPCE_BRIDGE_RESTORE
    set -g __lb_cf "$__lb_dir/cmd"
    set -g __lb_ef "$__lb_dir/env.fish"
    if test -n "$__lb_restore" -a -r "$__lb_restore"
        source "$__lb_restore" 2>/dev/null
    end
    set -e __lb_restore

    set -g __lb_n # the nonce of the command in flight
    set -g __lb_lines # its lines not given to the reader yet
    set -g __lb_buf # the incomplete lines in the buffer (a block, a quote)
    set -g __lb_st 0 # $status after the last line that ran
    set -g __lb_out # what __lb_escape made
    set -g __lb_env_names # the names exported at the last save (none yet: save at once)
    set -g __lb_env_count # and their count
    set -g __lb_env_changed 1 # (set: an exported variable changed since the last save)

    # Fish's stock prompt and title (VCS status, prompt_pwd) cost about 5 ms a command, and
    # nobody reads the prompt of an agent's terminal. Replace them only while they are the
    # stock ones shipped with fish: a prompt or title the user wrote is left alone.
    for __lb_fn in fish_prompt fish_right_prompt fish_title fish_mode_prompt
        if string match -q -- "$__fish_data_dir/functions/*" (functions --details $__lb_fn)
            functions -e $__lb_fn
        end
    end
    set -e __lb_fn
    # (Without fish_mode_prompt fish skips it: one function call less at every prompt.)
    if not functions -q fish_title
        # No title: without the function fish would print its default one.
        function fish_title
        end
    else
        # The user's own title. fish prints a title, and a carriage return after it, once a
        # line's preexec event has run: inside the line's output. While the bridge runs a
        # command the title is left as it is; at the prompt it is the user's again.
        functions -c fish_title __lb_title
        function fish_title
            if not set -q __lb_n[1]
                __lb_title $argv
            end
        end
    end
    if not functions -q fish_prompt
        # Its prompt-start mark outlives our hooks: a prompt without an end mark means
        # they were removed (the bridge then asks for $status; see shell.py at_prompt).
        function fish_prompt
            printf '\e]633;A\a$ '
        end
    end

    # fish's first prompt, in a HOME that has no generated completions yet, starts a man page
    # parser in the background (minutes of CPU, outliving the terminal; every terminal of a
    # fresh HOME, as tests and sandboxes have, would start one). Its output serves tab
    # completion, which nobody uses here: for that prompt, fish is shown a data folder of
    # ours whose completions exist (an empty folder, made by the bridge). The user's own
    # folder is untouched: their own fish generates them at its first prompt as usual.
    if set -q __fish_user_data_dir[1]
        set -g __lb_user_data_dir $__fish_user_data_dir
        set -g __fish_user_data_dir "$__lb_dir/fish"
    end

    # OSC 633 value escaping of its argument into $__lb_out. Neither a pipe from a function
    # nor a command substitution of one: fish fills those through a thread, which costs
    # milliseconds a command on a busy machine.
    function __lb_escape
        set -g __lb_out "$argv[1]"
        # The common text needs no escaping: one builtin instead of a pipeline of eight.
        if string match -qr '[\\\\;\a\e\n\r\x18\x1a]' -- "$__lb_out"
            set -g __lb_out (string replace -a -- '\\' '\\\\' "$__lb_out" \
                | string replace -a -- ';' '\\x3b' | string replace -a -- \a '\\x07' \
                | string replace -a -- \e '\\x1b' | string replace -a -- \n '\\x0a' \
                | string replace -a -- \r '\\x0d' | string replace -a -- \x18 '\\x18' \
                | string replace -a -- \x1a '\\x1a' | string collect)
        end
    end

    # The command's end, or the request for its next line: after a line ran (or was refused).
    # (Every statement here runs once a command: fish pays about as much for one builtin as
    # a bare prompt costs bash, and a regular expression or a command substitution costs
    # several times that.)
    function __lb_after
        if set -q __lb_lines[1]
            printf '\e]633;P;LbMore=%s\a' $__lb_n
            return
        end
        # What a replacement shell restores if this one dies ("NAME escaped-value" lines the
        # bridge turns into `set -gx` commands), saved before the end mark, and only when it
        # changed: listing the variables costs a third of all the hooks. (A pipe between
        # builtins costs half what a command substitution of `set -nx` costs.)
        if set -q __lb_env_changed[1]
            __lb_save_env
        else
            set -nx | count | read -l exported
            test "$exported" = "$__lb_env_count"; or __lb_save_env
        end
        if string match -qr '[\\\\;\a\e\n\r\x18\x1a]' -- $PWD
            __lb_escape $PWD
            printf '\e]633;P;Cwd=%s\a\e]633;D;%s;%s\a' $__lb_out $argv[1] $__lb_n
        else
            printf '\e]633;P;Cwd=%s\a\e]633;D;%s;%s\a' $PWD $argv[1] $__lb_n
        end
        set -g __lb_n
        set -g __lb_buf
    end

    function __lb_save_env
        set -xL >"$__lb_ef"
        set -l names (set -nx)
        if test "$names" != "$__lb_env_names"
            set -g __lb_env_names $names
            set -g __lb_env_count (count $names)
            function __lb_env_watch --on-variable=$names
                set -g __lb_env_changed 1
            end
        end
        set -g __lb_env_changed
    end

    # The command's start mark, with its text (escaped; none from 4 KiB on).
    function __lb_announce
        if string match -qr '[\\\\;\a\e\n\r\x18\x1a]|^[\s\S]{4096}' -- "$argv[1]"
            set -g __lb_out
            if not string match -qr '^[\s\S]{4096}' -- "$argv[1]"
                __lb_escape "$argv[1]"
            end
            printf '\e]633;E;%s;%s\a' "$__lb_out" $__lb_n
        else
            printf '\e]633;E;%s;%s\a' "$argv[1]" $__lb_n
        end
    end

    # The load key. After a nonce: a new command, its lines read from the file. After "-": the
    # rest of the command is dropped (it was interrupted). Alone: the command's next line.
    function __lb_load
        commandline | read -l typed # (the first line of the buffer)
        switch "$typed"
            case '??????????????????????'
                if string match -qr '^[A-Za-z0-9_-]{22}$' -- $typed
                    set -g __lb_n $typed
                    set -g __lb_buf
                    read -g -z -a -d \n __lb_lines <"$__lb_cf"
                    # The file's last newline ends a line, it starts none.
                    set -q __lb_lines[1]; and set -e __lb_lines[-1]
                    if set -q __lb_lines[2]
                        __lb_announce (string join \n -- $__lb_lines | string collect)
                    else
                        __lb_announce "$__lb_lines"
                    end
                end
            case -
                set -g __lb_lines
                commandline -r ''
                __lb_after_key
                return
        end
        set -q __lb_n[1]; or return
        set -l line
        while set -q __lb_lines[1]
            set line $__lb_lines[1]
            set -e __lb_lines[1]
            set -q __lb_buf[1]; and break
            switch "$line"
                case ''
                    # An empty line at the prompt runs nothing (fish only draws a new prompt).
                    set line
                case '*'
                    break
            end
        end
        if not set -q line[1]
            commandline -r ''
            __lb_after_key
            return
        end
        if set -q __lb_buf[1]
            set line (string join \n -- $__lb_buf $line)
        end
        __lb_load_line $line
    end

    # A line into the command line: run when complete, refused on a syntax error; while it
    # is incomplete (a block, a quote) the next lines join it, as Enter adds each to the
    # buffer, until it is complete or none is left.
    function __lb_load_line
        set -l line $argv
        while true
            commandline -r -- $line
            commandline --is-valid
            switch $status
                case 0
                    set -g __lb_buf
                    commandline -f execute
                    return
                case 2
                    set -q __lb_lines[1]; or break
                    set line (string join \n -- $line $__lb_lines[1])
                    set -e __lb_lines[1]
                case '*'
                    __lb_refuse $line
                    return
            end
        end
        # Still incomplete after the last line: it stays in the buffer, as Enter leaves it,
        # and the bridge abandons it.
        set -g __lb_buf $line
        printf '\e]633;P;LbZle=%s\a\e]633;P;LbEdit\a\e]633;P;LbCont=%s\a' $__lb_n $__lb_n
    end

    # A syntax error: fish's own message, and nothing of the line runs.
    function __lb_refuse
        set -g __lb_buf
        commandline -r ''
        printf '\n\e]633;P;LbZle=%s\a\e]633;P;LbEdit\a' $__lb_n
        set -l fish (status fish-path)
        $fish --no-config -n -c $argv
        __lb_after_key
    end

    # The end hook, from the load key's function (no line ran). When that ends the command,
    # an empty line accepted has fish draw its next prompt, whose mark tells the bridge the
    # shell is back at it (with none, what fish draws next, the echo of the next command's
    # keys included, would be kept as output printed between commands).
    function __lb_after_key
        __lb_after $__lb_st
        set -q __lb_n[1]; or commandline -f execute
    end

    # The `cwd` the bridge was asked to run a command in could not be entered: skip the rest.
    function __lb_skip
        set -g __lb_lines
        return 1
    end

    # The command hooks, defined again at a prompt that finds one erased (`functions -e`).
    function __lb_hooks
        function __lb_preexec --on-event fish_preexec
            if set -q __lb_n[1]
                # The end of the line editor's echo, then the line runs.
                printf '\e]633;P;LbZle=%s\a\e]633;P;LbEdit\a\e]633;C\a' $__lb_n
            end
        end

        function __lb_postexec --on-event fish_postexec
            set -g __lb_st $status
            set -q __lb_n[1]; or return
            # The shell is leaving: its exit status is the command's end.
            set -q __lb_exiting; and return
            __lb_after $__lb_st
            set -g __lb_answered 1
        end
    end
    __lb_hooks

    # `exit` ends the shell, as typed; the end hook then prints no end mark (the shell's exit
    # status is the command's end). Inside `source` it ends only the file.
    function exit --description 'Exit the shell'
        if not status stack-trace | string match -q 'from sourcing file *'
            set -g __lb_exiting 1
        end
        builtin exit $argv
    end

    # Ctrl-C at an incomplete buffer (the bridge abandons a command still incomplete after
    # its last line, as a user would): nothing ran, `$status` is as it was.
    function __lb_cancel --on-event fish_cancel
        if set -q __lb_n[1]
            set -g __lb_lines
            __lb_after $__lb_st
        end
    end

    function __lb_prompt --on-event fish_prompt
        set -l st $status
        if set -q __lb_answered
            # The common case: the end hook answered the line that ran.
            set -e __lb_answered
            functions -q __lb_preexec; or __lb_hooks
        else
            if set -q __lb_user_data_dir
                # fish's own first-prompt handler, defined before ours, has run. It also
                # installed handlers that turn bracketed paste on at each prompt and off
                # before each command: two function calls and two writes a command, for
                # pastes no terminal of ours makes. They go, and the mode is left off.
                set -g __fish_user_data_dir $__lb_user_data_dir
                set -e __lb_user_data_dir
                if functions -q __fish_enable_bracketed_paste
                    functions -e __fish_enable_bracketed_paste __fish_disable_bracketed_paste
                    printf '\e[?2004l'
                end
            end
            set -e __lb_exiting # an `exit` that fish refused (jobs still running): still here
            if set -q __lb_n[1]
                # The postexec hook is gone: the end mark (or the next line's request) still
                # comes.
                set -g __lb_st $st
                __lb_after $st
            else
                __lb_escape $PWD
                printf '\e]633;P;Cwd=%s\a' $__lb_out
            end
            if not functions -q __lb_preexec; or not functions -q __lb_postexec
                __lb_hooks
            end
        end
        printf '\e]633;A\a'
    end

    # Commands come from a program: no suggestions from history while the bridge types.
    set -g fish_autosuggestion_enabled 0
    # The new-command key switches to a bind mode of ours whose only binding, besides the
    # load key (which switches back), inserts any key: fish matches each typed key of the
    # nonce against that mode's bindings alone, not the hundred of the user's mode.
    for __lb_mode in default insert
        bind -M $__lb_mode \e\[7799~ __lb_load
        bind -M $__lb_mode -m __lb_nonce_$__lb_mode \e\[7797~ suppress-autosuggestion
        bind -M __lb_nonce_$__lb_mode '' self-insert
        bind -M __lb_nonce_$__lb_mode -m $__lb_mode \e\[7799~ __lb_load
    end
    set -e __lb_mode
end
