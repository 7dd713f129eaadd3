"""``cloudcred completion bash|zsh|fish`` and the ``cloudcred __complete`` it calls.

The shell scripts are thin, as cobra's are for kubectl: on Tab they run
``cloudcred __complete WORD... CURRENT`` and offer what it prints. One Python function
knows the commands and flags (it walks the argparse parser, so it never falls behind)
and looks up values the way kubectl does: CloudCredential names in the namespace the
line names, namespaces and contexts, with the line's --kubeconfig, --context and --as.

``__complete`` prints a directive line, ``words`` or ``files`` (let the shell complete
file names), then one candidate per line. Lookups that fail print nothing: a Tab never
shows an error.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

SHELLS = ("bash", "zsh", "fish")
LOOKUP_TIMEOUT = 5.0  # seconds: a Tab that waits longer is worse than no candidates
# Flags whose value is a file name.
_FILES = {"kubeconfig", "from_file"}

BASH = r"""# bash completion for cloudcred: source <(cloudcred completion bash)
_cloudcred() {
    local line=${COMP_LINE:0:COMP_POINT} cur out directive candidates=""
    local -a words
    read -ra words <<< "$line"
    if [[ ${#words[@]} -eq 0 || $line == *[[:space:]] ]]; then words+=(""); fi
    cur=${words[-1]}
    # --flag=value: bash replaces only what follows the '=' (a word break)
    if [[ $cur == -*=* ]]; then cur=${cur#*=}; fi
    out=$("${words[0]}" __complete "${words[@]:1}" 2>/dev/null) || return 0
    directive=${out%%$'\n'*}
    if [[ $out == *$'\n'* ]]; then candidates=${out#*$'\n'}; fi
    if [[ $directive == files ]]; then
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    else
        mapfile -t COMPREPLY < <(compgen -W "$candidates" -- "$cur")
    fi
}
complete -F _cloudcred cloudcred kubectl-cloudcred
"""

ZSH = r"""#compdef cloudcred kubectl-cloudcred
# zsh completion for cloudcred: source <(cloudcred completion zsh) after compinit
_cloudcred() {
    local out
    local -a lines candidates
    out=$("${words[1]}" __complete "${(@)words[2,CURRENT]}" 2>/dev/null) || return 1
    lines=("${(@f)out}")
    if [[ $PREFIX == -*=* ]]; then compset -P '*='; fi
    if [[ ${lines[1]} == files ]]; then _files; return; fi
    candidates=("${(@)lines[2,-1]}")
    (( ${#candidates} )) && compadd -a candidates
}
if [[ "${funcstack[1]}" == "_cloudcred" ]]; then
    _cloudcred "$@"
else
    compdef _cloudcred cloudcred kubectl-cloudcred
fi
"""

FISH = r"""# fish completion for cloudcred: cloudcred completion fish | source
function __cloudcred_complete
    set -l tokens (commandline -opc)
    set -l current (commandline -ct)
    set -l out ($tokens[1] __complete $tokens[2..-1] $current 2>/dev/null)
    or return
    set -l prefix ""
    set -l value $current
    if string match -qr -- '^-[^=]*=' $current
        set prefix (string match -r -- '^[^=]*=' $current)
        set value (string replace -r -- '^[^=]*=' '' $current)
    end
    if test "$out[1]" = files
        for path in (__fish_complete_path $value)
            echo $prefix$path
        end
        return
    end
    for candidate in $out[2..-1]
        echo $prefix$candidate
    end
end
complete -c cloudcred -f -a '(__cloudcred_complete)'
complete -c kubectl-cloudcred -f -a '(__cloudcred_complete)'
"""

_SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}


def script(shell: str) -> str:
    return _SCRIPTS[shell]


@dataclass
class Line:
    """What the words before the cursor say: the command, flag values, positionals."""

    command: argparse.ArgumentParser | None = None
    name: str = ""
    values: dict[str, str] = field(default_factory=dict)  # dest -> last value given
    positionals: int = 0
    pending: argparse.Action | None = None  # a flag that still waits for its value


def complete(parser: argparse.ArgumentParser, words: list[str]) -> str:
    """The output of ``cloudcred __complete *words`` (the last word is being typed)."""
    *done, current = words or [""]
    line = _read(parser, done)
    if line.pending is not None:
        return _value(line, line.pending, current)
    if line.command is None:
        if current.startswith("-"):
            return _words(["--help", "--version"], current)
        return _words(list(_subcommands(parser)), current)
    options = _options(line.command)
    if current.startswith("-") and "=" in current:
        flag, _, value = current.partition("=")
        action = options.get(flag)
        return _value(line, action, value) if action and action.nargs != 0 else _words([], "")
    if current.startswith("-"):
        return _words(sorted(options), current)
    positionals = [a for a in line.command._actions if not a.option_strings]
    if line.positionals < len(positionals):
        return _value(line, positionals[line.positionals], current)
    return _words([], current)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(command: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in command._actions for flag in action.option_strings}


def _read(parser: argparse.ArgumentParser, done: list[str]) -> Line:
    line = Line()
    subcommands = _subcommands(parser)
    for word in done:
        if line.pending is not None:
            line.values[line.pending.dest] = word
            line.pending = None
        elif line.command is None:
            if word in subcommands:
                line.command, line.name = subcommands[word], word
        elif word.startswith("-"):
            flag, equals, value = word.partition("=")
            action = _options(line.command).get(flag)
            if action is None or action.nargs == 0:
                continue
            if equals:
                line.values[action.dest] = value
            else:
                line.pending = action
        else:
            line.positionals += 1
    return line


def _words(candidates: list[str], prefix: str) -> str:
    return "".join(f"{c}\n" for c in ["words", *(c for c in candidates if c.startswith(prefix))])


def _value(line: Line, action: argparse.Action | None, prefix: str) -> str:
    if action is None:
        return _words([], prefix)
    if action.dest in _FILES:
        return "files\n"
    if action.choices:
        return _words([str(choice) for choice in action.choices], prefix)
    lookup = _LOOKUPS.get(action.dest) or _FORMATS.get((line.name, action.dest))
    if lookup is None:
        return _words([], prefix)
    try:
        return _words(lookup(line), prefix)
    except Exception:  # no cluster, no rights, no kubeconfig: no candidates, no noise
        return _words([], prefix)


def _kube(line: Line) -> Any:
    from cloudcred.cli import api

    groups = (line.values["as_groups"],) if line.values.get("as_groups") else ()
    access = api.Access(
        line.values.get("kubeconfig"), line.values.get("context"), line.values.get("as_user"),
        groups if line.values.get("as_user") else (),
    )  # fmt: skip
    return api.connect(access)


def _credentials(line: Line) -> list[str]:
    from cloudcred.constants import CREDENTIAL_PLURAL, GROUP, VERSION

    kube = _kube(line)
    namespace = line.values.get("namespace") or kube.namespace
    listing = kube.custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, CREDENTIAL_PLURAL, _request_timeout=LOOKUP_TIMEOUT
    )
    return sorted(str(item["metadata"]["name"]) for item in listing.get("items") or [])


def _namespaces(line: Line) -> list[str]:
    kube = _kube(line)
    listing = kube.core.list_namespace(_request_timeout=LOOKUP_TIMEOUT)
    return sorted(str(item.metadata.name) for item in listing.items)


def _contexts(line: Line) -> list[str]:
    from cloudcred.cli import api

    return sorted(api.contexts(line.values.get("kubeconfig")))


def _trust_formats(line: Line) -> list[str]:
    from cloudcred.cli.trust import FORMATS

    return list(FORMATS)


def _permission_formats(line: Line) -> list[str]:
    from cloudcred.cli.permissions import FORMATS

    return list(FORMATS)


def _gitops_formats(line: Line) -> list[str]:
    from cloudcred.cli.rotate import GITOPS_FORMATS

    return list(GITOPS_FORMATS)


_LOOKUPS = {
    "name": _credentials,
    "namespace": _namespaces,
    "context": _contexts,
}
_FORMATS = {
    ("trust-policy", "output"): _trust_formats,
    ("rotate", "output"): _gitops_formats,
    ("permissions", "output"): _permission_formats,
}


def kubectl_plugin_answer(parser: argparse.ArgumentParser, words: list[str]) -> str:
    """What ``kubectl_complete-cloudcred`` prints: kubectl (1.26+) runs it with the words
    after ``kubectl cloudcred`` and reads cobra's answer: one candidate per line, then
    ``:4`` (no file names) or ``:0`` (file names)."""
    directive, *candidates = complete(parser, words).splitlines()
    code = ":0" if directive == "files" else ":4"
    return "".join(f"{line}\n" for line in candidates) + f"{code}\n"
