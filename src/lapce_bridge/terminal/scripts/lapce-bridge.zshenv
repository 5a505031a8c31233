# lapce-bridge shell integration for zsh, part 1: installed as $ZDOTDIR/.zshenv.
#
# zsh reads .zshenv and .zshrc from $ZDOTDIR; the bridge points ZDOTDIR at a folder holding
# these two files and passes the user's own ZDOTDIR (if any) in LAPCE_BRIDGE_ZDOTDIR. Here the
# user's .zshenv is read with their ZDOTDIR in place; then ZDOTDIR points back at ours so that
# zsh reads our .zshrc next, which restores theirs for good.
__lb_zdotdir=$ZDOTDIR
if [[ -n ${LAPCE_BRIDGE_ZDOTDIR+x} ]]; then
    ZDOTDIR=$LAPCE_BRIDGE_ZDOTDIR
else
    unset ZDOTDIR
fi
unset LAPCE_BRIDGE_ZDOTDIR
if [[ ${LAPCE_BRIDGE_RC-1} == 1 ]]; then
    if [[ -r ${ZDOTDIR:-$HOME}/.zshenv ]]; then
        . "${ZDOTDIR:-$HOME}/.zshenv"
    fi
else
    setopt no_global_rcs
fi
if [[ -n ${ZDOTDIR+x} ]]; then
    __lb_user_zdotdir=$ZDOTDIR
fi
ZDOTDIR=$__lb_zdotdir
