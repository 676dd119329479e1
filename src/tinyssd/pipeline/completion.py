"""Shell completion for the ``tinyssd`` command: ``eval "$(tinyssd -sc install=bash)"``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

__all__ = ["BASH_COMPLETION", "shell_completion"]

# Bash completion for ``tinyssd``: the command first, then Hydra's own completion of that command's
# config (keys, groups and their options), asked through ``tinyssd -sc query=bash``. Hydra's
# script (``tinyssd train -sc install=bash``) cannot serve a command with subcommands: it would
# register ``train`` as a second program and ask ``tinyssd`` alone for the choices.
BASH_COMPLETION = """\
_tinyssd_completion()
{
    local words=($COMP_LINE)
    local word="${words[$COMP_CWORD]}"
    if (( COMP_CWORD <= 1 )); then
        COMPREPLY=($(compgen -W "%(commands)s --help" -- "$word"))
        return
    fi
    local choices=$(COMP_LINE="$COMP_LINE" tinyssd -sc query=bash 2>/dev/null)
    COMPREPLY=($(compgen -o nospace -o default -W "$choices" -- "$word"))
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _tinyssd_completion tinyssd
"""


def shell_completion(request: str, commands: Sequence[str], run: Callable[..., None]) -> int:
    """``tinyssd -sc install=bash`` prints the script to ``eval``; ``-sc query=bash`` answers it (exit status)."""
    import os

    if request == "install=bash":
        print(BASH_COMPLETION % {"commands": " ".join(commands)}, end="")
        return 0
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    if request == "query=bash" and len(words) >= 2 and words[1] in commands:
        # Hydra completes the line with the program's name first: drop the command word.
        os.environ["COMP_LINE"] = " ".join([words[0], line.split(words[1], 1)[1].lstrip()])
        run(words[1], ["-sc", "query=bash"], program=f"tinyssd {words[1]}")
        return 0
    if request == "query=bash":
        return 0  # nothing to complete before the command (the script completes it)
    print(
        f"tinyssd: shell completion {request!r} is not known; use -sc install=bash (see the README, Install).",
        file=sys.stderr,
    )
    return 2
