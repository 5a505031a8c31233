# lapce-bridge shell integration for fish: read through `fish --init-command`, after config.fish.
#
# Invariants:
# - no hook forks: escaping and file reads use builtins only (fish runs builtins and command
#   substitutions of builtins in-process);
# - the nonce and our control variables never reach the environment user commands see: each
#   command's nonce arrives as typed text (`set -g __lb_n <nonce>; source $__lb_cf`), is
#   printed back in E and D, and is forgotten at the next prompt;
# - after every command: P;Cwd, then D;<status>;<nonce>, then A.
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

    # Fish's stock prompt and title (VCS status, prompt_pwd) cost about 5 ms a command, and
    # nobody reads the prompt of an agent's terminal. Replace them only while they are the
    # stock ones shipped with fish: a prompt or title the user wrote is left alone.
    for __lb_fn in fish_prompt fish_right_prompt fish_title
        if string match -q -- "$__fish_data_dir/functions/*" (functions --details $__lb_fn)
            functions -e $__lb_fn
        end
    end
    set -e __lb_fn
    if not functions -q fish_prompt
        # Its prompt-start mark outlives our hooks: a prompt without an end mark means
        # they were removed (the bridge then asks for $status; see shell.py at_prompt).
        function fish_prompt
            printf '\e]633;A\a$ '
        end
    end

    function __lb_escape
        # The common text needs no escaping: one builtin instead of a pipeline of six.
        if not string match -qr '[\\\\;\a\e\n\r]' -- $argv[1]
            printf '%s' $argv[1]
            return
        end
        string replace -a -- '\\' '\\\\' $argv[1] | string replace -a -- ';' '\\x3b' \
            | string replace -a -- \a '\\x07' | string replace -a -- \e '\\x1b' \
            | string replace -a -- \n '\\x0a' | string replace -a -- \r '\\x0d'
    end

    # The command hooks, defined again at a prompt that finds one erased (`functions -e`).
    function __lb_hooks
        function __lb_preexec --on-event fish_preexec
            set -l cmd $argv[1]
            # Our typed line carries the nonce (its assignment has not run yet).
            set -l nonce (string match -r --groups-only -- '^set -g __lb_n ([0-9a-f]+); source \$__lb_cf; __lb_exited$' $cmd)
            if test -n "$nonce" -a -r "$__lb_cf"
                read -z -l text <"$__lb_cf"
                and set cmd $text
            end
            printf '\e]633;E;%s;%s\a\e]633;C\a' (__lb_escape "$cmd" | string collect) "$nonce"
        end

        function __lb_postexec --on-event fish_postexec
            set -l st $status
            if set -q __lb_exiting
                return  # the shell is leaving: its exit status is the command's end
            end
            if set -q __lb_n
                # What a replacement shell restores if this one dies ("NAME escaped-value" lines
                # the bridge turns into `set -gx` commands), saved before the end mark.
                set -xL >"$__lb_ef"
                printf '\e]633;P;Cwd=%s\a\e]633;D;%s;%s\a' (__lb_escape "$PWD" | string collect) \
                    $st "$__lb_n"
                set -e __lb_n
                set -g __lb_answered 1
            end
        end
    end
    __lb_hooks

    # `exit` in the command ends the shell, as typed: inside `source` it would end only the
    # file, so it is noted here and done by the typed line once the file returns.
    function exit --description 'Exit the shell'
        set -l files (status stack-trace | string match -r --groups-only -- '^from sourcing file (.*)$')
        if test "$files[1]" = "$__lb_cf"
            if set -q argv[1]
                set -g __lb_exit $argv[1]
            else
                set -g __lb_exit $status
            end
        end
        builtin exit $argv
    end

    function __lb_exited
        set -l st $status
        if set -q __lb_exit
            set -l code $__lb_exit
            set -e __lb_exit
            set -g __lb_exiting 1  # fish leaves once the line is done: no end mark before
            builtin exit $code
        end
        return $st
    end

    function __lb_prompt --on-event fish_prompt
        if set -q __lb_n
            # The postexec hook is gone: the end mark still comes, from the prompt.
            printf '\e]633;P;Cwd=%s\a\e]633;D;%s;%s\a' (__lb_escape "$PWD" | string collect) \
                $status "$__lb_n"
            set -e __lb_n
        else if not set -q __lb_answered
            printf '\e]633;P;Cwd=%s\a' (__lb_escape "$PWD" | string collect)
        end
        set -e __lb_answered
        if not functions -q __lb_preexec; or not functions -q __lb_postexec
            __lb_hooks
        end
        printf '\e]633;A\a'
    end
end
