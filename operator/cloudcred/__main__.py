"""The ``cloudcred`` command: ``cloudcred run`` starts the operator; list, usage and
rotate are its command-line companion (also installed as the kubectl plugin
``kubectl cloudcred``).

cloudcred run [--standalone] [-A | -n NAMESPACE ...] [--liveness URL]
              [--priority N|auto] [--peering NAME]
cloudcred crds                  print the CustomResourceDefinitions (kubectl apply -f -)
cloudcred list [-A | -n NS]     CloudCredentials: key or role, clusters, verified, rollout
cloudcred usage NAME [-n NS]    the clusters that use a credential, and their revision
cloudcred rotate NAME [-n NS]   replace its key (read from stdin), follow the rollout
cloudcred completion SHELL      a bash, zsh or fish completion script

`cloudcred COMMAND --help` describes each command, its input and its exit codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cloudcred import __version__, cli, peering
from cloudcred.config import Settings, SettingsError

# Loggers that would print request details (and, at DEBUG, secrets) if left alone.
QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "kubernetes.client.rest", "azure",
                 "msal", "google.auth", "scaleway", "scaleway_core")  # fmt: skip


def _prog() -> str:
    """``kubectl cloudcred`` when run as the kubectl plugin, else ``cloudcred``."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv else ""
    return "kubectl cloudcred" if invoked == "kubectl-cloudcred" else "cloudcred"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog(), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"cloudcred {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (default unless CLOUDCRED_NAMESPACES is set)",
    )
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace or glob pattern; repeatable",
    )
    run.add_argument(
        "--standalone", action="store_true", help="no peering: act even if other operators run"
    )
    run.add_argument(
        "--liveness",
        default=None,
        help="liveness endpoint URL (default CLOUDCRED_LIVENESS_ENDPOINT)",
    )
    run.add_argument(
        "--priority",
        type=peering.priority,
        default=0,
        help="peering priority: an integer, or auto (the earliest started replica acts)",
    )
    run.add_argument("--peering", default=None, help="peering object name")
    commands.add_parser("crds", help="print the CustomResourceDefinitions as YAML")
    cli.add_commands(commands)
    return parser  # fmt: skip


class _WatchHandlerSuccesses(logging.Filter):
    """Drops kopf's "Handler 'credential_event' succeeded." lines: kopf logs one per watch
    event, that is one per write to any CloudCredential (and, with peering, Cluster:
    thousands during a rollout), and they say nothing; failures still reach the log."""

    QUIET = frozenset(
        f"Handler '{name}' succeeded." for name in ("cluster_sign", "credential_event")
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.QUIET


def _configure_logging(settings: Settings) -> None:
    import kopf

    log_format = {
        "plain": kopf.LogFormat.PLAIN,
        "full": kopf.LogFormat.FULL,
        "json": kopf.LogFormat.JSON,
    }[settings.log_format]
    kopf.configure(debug=settings.log_level == "DEBUG", log_format=log_format)
    logging.getLogger().setLevel(settings.log_level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").addFilter(_WatchHandlerSuccesses())


def run(args: argparse.Namespace, settings: Settings) -> None:
    import kopf

    import cloudcred.handlers  # registers the handlers

    if not args.standalone:
        cloudcred.handlers.events.watch_clusters_for_peering()
    _configure_logging(settings)
    namespaces = args.namespace or ([] if args.all_namespaces else settings.namespaces)
    logging.getLogger("cloudcred").info(
        "starting cloudcred %s: namespaces=%s standalone=%s priority=%s",
        __version__, namespaces or "all", args.standalone, args.priority,
    )  # fmt: skip
    kopf.run(
        standalone=args.standalone,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness or settings.liveness_endpoint,
        priority=args.priority,
        peering_name=args.peering,
        # The controllers list the watched namespaces themselves too (cache repair).
        memo=kopf.Memo(namespaces=namespaces, standalone=args.standalone),
    )


def kubectl_complete(argv: list[str] | None = None) -> int:
    """``kubectl_complete-cloudcred``: completes ``kubectl cloudcred ...`` for kubectl."""
    from cloudcred.cli import completion

    words = sys.argv[1:] if argv is None else argv
    sys.stdout.write(completion.kubectl_plugin_answer(_parser(), words))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["__complete"]:  # the shell completion scripts' call, not a command
        return cli.complete(parser, words[1:])
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in cli.COMMANDS:
        # Not echoed: a key typed on the command line must not be printed back.
        parser.error(f"{args.command}: {len(extra)} unexpected argument(s), not shown; a key "
                     "is read from stdin or --from-file, never from the command line")  # fmt: skip
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in cli.COMMANDS:
        return cli.run_command(args)
    if args.command == "crds":
        from cloudcred.api.crd import CRD_FILES, render

        print("---\n".join(render(build()) for build in CRD_FILES.values()), end="")
        return 0
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as error:
        print(f"cloudcred: bad configuration: {error}", file=sys.stderr)
        return 2
    run(args, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
