"""The command-line companion: ``cloudcred list | usage | permissions | rotate |
trust-policy | console | completion`` (also ``kubectl cloudcred``).

``add_commands`` puts the subcommands on the ``cloudcred`` parser; ``run_command`` runs
one and turns every failure into one ``cloudcred: ...`` line on stderr and an exit code.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from cloudcred.cli.completion import SHELLS
from cloudcred.cli.errors import CliError
from cloudcred.cli.output import LISTING_FORMATS
from cloudcred.constants import DEFAULT_OPERATOR_NAMESPACE

if TYPE_CHECKING:  # the API client is imported only by commands that use it
    from cloudcred.cli import api

COMMANDS = ("list", "usage", "permissions", "rotate", "trust-policy", "console", "completion")

EXIT_CODES = """\
exit codes:
  0  done
  1  error: the API refused or could not be reached, not found{extra}
  2  bad usage or bad input
"""

LIST_HELP = """\
Lists CloudCredentials with what matters day to day:

  NAME          the credential (NAMESPACE first with -A)
  PROVIDER      AWS, GCP, AZURE or SCALEWAY
  KEY OR ROLE   status.publicId: access key id, role ARN, client id or e-mail
  CLUSTERS      how many clusters are bound to it
  VERIFIED      True, or the status and reason: False (InvalidCredentials)
  KEY AGE       days since the static key was created (AWS, when readable)
  UNUSED SINCE  when the last bound cluster went away
  ROLLOUT       clusters on the current revision / bound clusters

-o wide adds READY, REVISION, SECRET (the Secret holding the key) and IDENTITY;
-o json and -o yaml print the CloudCredentials as a List, as kubectl get does;
-o name prints cloudcredential.cloudcred.io/NAME lines.

examples:
  cloudcred list -A -o json | jq -r '.items[] | select(.status.clusterCount == 0)
      | "\\(.metadata.namespace)/\\(.metadata.name)"'
  cloudcred list -n acme -o wide

""" + EXIT_CODES.format(extra="")

USAGE_HELP = """\
Shows the clusters bound to a CloudCredential and whether each one is deployed with
the credential's current revision:

  UP TO DATE    yes: deployed with the current revision; pending: marked for
                redeploy (or waiting for its first deployment); no: neither

-n names the credential's namespace. Clusters are looked up in that namespace and in
those the credential's status.clusters names, so rights in those namespaces are
enough; a namespace you cannot list is reported on stderr and left out. -A looks in
every namespace with one request, and needs the right to list clusters.cloudcred.io
cluster-wide.

-o wide adds READY, REDEPLOY (the RedeployPending reason) and LAST DEPLOYED;
-o json and -o yaml print the bound Clusters as a List; -o name prints
cluster.cloudcred.io/NAME lines.

examples:
  cloudcred usage aws-prod -n acme -o json | jq -r '.items[]
      | "\\(.metadata.namespace)/\\(.metadata.name) \\(.status.deployedRevision)"'

""" + EXIT_CODES.format(extra="")

PERMISSIONS_HELP = (
    """\
Shows the last permission check of a CloudCredential: its PermissionsSufficient
condition, and for each PermissionSet it or its bound clusters name, the verdict
(True, False, or Unknown and why), how many needs were checked and every one that is
missing (status.permissions; at most 64 per set are kept, with the exact count).

-o json and -o yaml print the check as one document (namespace, name, revision,
condition, checkedRevision, checkedTime, sets).

examples:
  cloudcred permissions aws-prod -n acme
  cloudcred permissions aws-prod -n acme -o json | jq -r '.sets[].missing[]?'

"""
    + EXIT_CODES.format(extra="")
    + """\
  4  permissions are missing (PermissionsSufficient False)
  5  the check could not say (Unknown), or the current revision is not checked yet
"""
)

ROTATE_HELP = (
    """\
Puts a new key in place of a credential's current one, follows the rollout to the
bound clusters and says when the old key can be deleted at the provider.

The new key is read from stdin (or --from-file), never from the command line, and is
never printed. Accepted input, by the credential's spec.provider:

  AWS       the JSON printed by `aws iam create-access-key`
              {"AccessKey": {"AccessKeyId": ..., "SecretAccessKey": ...}}
            or {"accessKeyId": ..., "secretAccessKey": ...}
            or KEY=VALUE lines AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
  GCP       a service-account key file: JSON with "type": "service_account",
            private_key and client_email
  AZURE     the JSON printed by `az ad app credential reset`
              {"appId": ..., "password": ..., "tenant": ...}
            (appId and tenant must be the credential's clientId and tenantId)
            or a single line holding the client secret
  SCALEWAY  the JSON printed by `scw iam api-key create -o json`
              {"access_key": ..., "secret_key": ...}
            or KEY=VALUE lines SCW_ACCESS_KEY=... SCW_SECRET_KEY=...

What it does, in order:
  1. creates a new Secret <credential>-<UTC yyyymmddhhmmss> in the credential's
     namespace, owned by the credential, with the key under the same key name;
  2. switches the credential's Secret reference and public key id (AWS accessKeyId,
     Scaleway accessKey) in one merge patch, so no half-rotated state is ever seen;
  3. waits for the operator to verify the new key, then shows the rollout
     (N/M clusters on revision R) until every bound cluster uses it, and prints the
     command that deletes the old key at the provider. --no-wait stops after step 2.

With --gitops, step 2 is left to Git: rotate creates the Secret, leaves the
credential untouched (a GitOps tool with self-heal would revert a patch) and prints
the CloudCredential with the new fields on stdout (-o yaml, the default, or -o json)
for a pull request; the changed fields are listed on stderr.

A credential without a key (AWS roleArn, GCP workload identity) has nothing to rotate.

examples:
  aws iam create-access-key --user-name deployer | cloudcred rotate aws-prod -n acme
  cloudcred rotate gcp-staging -n acme --from-file key.json --timeout 30m
  az ad app credential reset --id $APP_ID | kubectl cloudcred rotate azure-prod
  cloudcred rotate aws-prod -n acme --from-file key.json --gitops > clusters/acme/aws-prod.yaml

"""
    + EXIT_CODES.format(extra=",\n     the new key was refused by the provider")
    + """\
  3  timed out (--timeout, default 10m): the new key stays configured
"""
)

TRUST_POLICY_HELP = """\
Prints the trust policy the IAM role of an AWS role credential must have, or a
CloudFormation template that creates that role (-o cloudformation).

The operator, not the credential's author, determines the ExternalId (from the
installation key, the namespace's UID and the credential's name); the policy lets
the operator's principal (recorded on the installation Secret, or --principal) call
sts:AssumeRole only with that ExternalId, and sts:TagSession only with the
credential's namespace and name as session tags. Both are derived from the
installation Secret (--operator-namespace), which needs get on it; the credential's
status is shown, never trusted, since tenants may be able to write it.

examples:
  cloudcred trust-policy aws-prod -n acme > trust.json
  aws iam update-assume-role-policy --role-name cloudcred-acme --policy-document file://trust.json
  cloudcred trust-policy aws-prod -n acme -o cloudformation > role.json
  aws cloudformation deploy --template-file role.json --stack-name cloudcred-acme \\
      --capabilities CAPABILITY_NAMED_IAM

""" + EXIT_CODES.format(extra=", no recorded principal")

CONSOLE_HELP = """\
Serves the Cloud Credentials page in a browser: every credential with its provider,
key or role, associated clusters, state, key age and rotation; each credential's
clusters, conditions, rollout and recent events. It uses your kubeconfig and identity
(--context, --as), so Kubernetes RBAC decides what you see, and runs nothing in the
cluster.

The server listens on 127.0.0.1 only, on a free port (or --port). It prints a URL
holding a one-time token and opens it in the browser (unless --no-browser); the token
opens one browser session. Ctrl-C stops the console.

-n follows one namespace (default: the context's), -A every namespace.

examples:
  cloudcred console -A
  cloudcred console -n acme --port 8080 --no-browser

""" + EXIT_CODES.format(extra=", the port is taken")


COMPLETION_HELP = """\
Prints a shell completion script: commands, flags, their values, and the names of
CloudCredentials, contexts and namespaces looked up as you type (with the
--kubeconfig, --context, -n and --as given on the line).

  bash  source <(cloudcred completion bash)           # in ~/.bashrc
  zsh   source <(cloudcred completion zsh)            # in ~/.zshrc, after compinit
  fish  cloudcred completion fish > ~/.config/fish/completions/cloudcred.fish

The scripts complete both cloudcred and kubectl-cloudcred.

""" + EXIT_CODES.format(extra="")


def _kube_options(all_namespaces: bool | str) -> argparse.ArgumentParser:
    """kubectl's flags, with kubectl's meaning; ``all_namespaces`` is the -A help (True:
    the default one), or False for commands about one object."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("cluster access (as in kubectl)")
    group.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)",
    )
    group.add_argument("--context", help="kubeconfig context (default: the current one)")
    group.add_argument(
        "-n",
        "--namespace",
        metavar="NS",
        help="namespace (default: the context's namespace, else default)",
    )
    if all_namespaces:
        group.add_argument(
            "-A",
            "--all-namespaces",
            action="store_true",
            help="every namespace (wins over -n)" if all_namespaces is True else all_namespaces,
        )
    group.add_argument(
        "--as", dest="as_user", metavar="USER", help="impersonate this user (as kubectl --as)"
    )
    group.add_argument(
        "--as-group",
        dest="as_groups",
        action="append",
        default=[],
        metavar="GROUP",
        help="impersonate this group too; repeatable; needs --as",
    )
    return parent


def _output(default_help: str) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-o",
        "--output",
        choices=LISTING_FORMATS,
        metavar="FORMAT",
        help=f"json, yaml, wide or name (default: {default_help})",
    )
    return parent


def add_commands(commands: Any) -> None:
    """Adds list, usage, permissions, rotate, trust-policy and completion to ``commands``
    (an argparse subparsers action)."""
    raw = argparse.RawDescriptionHelpFormatter
    commands.add_parser(
        "list",
        help="list CloudCredentials: key, clusters, verified, rollout",
        description=LIST_HELP,
        formatter_class=raw,
        parents=[_kube_options(all_namespaces=True), _output("a table")],
    )
    usage = commands.add_parser(
        "usage",
        help="show the clusters that use a CloudCredential",
        description=USAGE_HELP,
        formatter_class=raw,
        parents=[
            _kube_options(
                all_namespaces="look for clusters in every namespace (one cluster-wide list); "
                "-n still names the credential's namespace"
            ),
            _output("a table"),
        ],
    )
    usage.add_argument("name", metavar="NAME", help="the CloudCredential")
    permissions = commands.add_parser(
        "permissions",
        help="show what a CloudCredential's PermissionSets miss",
        description=PERMISSIONS_HELP,
        formatter_class=raw,
        parents=[_kube_options(all_namespaces=False)],
    )
    permissions.add_argument("name", metavar="NAME", help="the CloudCredential")
    permissions.add_argument(
        "-o", "--output", metavar="FORMAT", help="json or yaml (default: a table)"
    )
    rotate = commands.add_parser(
        "rotate",
        help="replace a credential's key (read from stdin) and follow the rollout",
        description=ROTATE_HELP,
        formatter_class=raw,
        parents=[_kube_options(all_namespaces=False)],
    )
    rotate.add_argument("name", metavar="NAME", help="the CloudCredential")
    rotate.add_argument(
        "--from-file",
        metavar="PATH",
        help="read the new key from this file instead of stdin ('-': stdin)",
    )
    rotate.add_argument(
        "--timeout",
        default="10m",
        metavar="DURATION",
        help="how long to wait for the rollout: 30s, 5m, 1h (default 10m)",
    )
    rotate.add_argument(
        "--no-wait", action="store_true", help="stop once the credential uses the new Secret"
    )
    rotate.add_argument(
        "--now",
        action="store_true",
        help="with spec.rotation.policy Automatic: ask the operator to make a new key now, "
        "and follow the rotation (no key on stdin)",
    )
    rotate.add_argument(
        "--gitops",
        action="store_true",
        help="create the Secret, leave the credential alone and print it with the new fields "
        "for a pull request",
    )
    rotate.add_argument(
        "-o", "--output", metavar="FORMAT",
        help="with --gitops: yaml (default) or json",
    )  # fmt: skip

    trust = commands.add_parser(
        "trust-policy",
        help="print the trust policy (or a CloudFormation template) for an AWS role credential",
        description=TRUST_POLICY_HELP,
        formatter_class=raw,
        parents=[_kube_options(all_namespaces=False)],
    )
    trust.add_argument("name", metavar="NAME", help="the CloudCredential")
    trust.add_argument(
        "-o", "--output", default="json", metavar="FORMAT",
        help="json (the trust policy, default) or cloudformation (a template creating the role)",
    )  # fmt: skip
    trust.add_argument(
        "--principal",
        metavar="ARN",
        help="the operator's AWS principal (default: the one the operator recorded on "
        "its installation Secret)",
    )
    trust.add_argument(
        "--operator-namespace",
        metavar="NS",
        default=DEFAULT_OPERATOR_NAMESPACE,
        help=f"where the operator runs (default: {DEFAULT_OPERATOR_NAMESPACE}); its "
        "installation Secret there is read",
    )
    console = commands.add_parser(
        "console",
        help="serve the Cloud Credentials page on 127.0.0.1 and open it in the browser",
        description=CONSOLE_HELP,
        formatter_class=raw,
        parents=[_kube_options(all_namespaces=True)],
    )
    console.add_argument(
        "--port",
        type=_port,
        default=0,
        metavar="PORT",
        help="port to listen on (default: a free one)",
    )
    console.add_argument(
        "--no-browser", action="store_true", help="print the URL without opening a browser"
    )
    console.add_argument(
        "-v", "--verbose", action="store_true",
        help="log each request (method, path, status) on stderr",
    )  # fmt: skip
    console.add_argument(
        "--operator-namespace",
        metavar="NS",
        default=DEFAULT_OPERATOR_NAMESPACE,
        help=f"where the operator runs (default: {DEFAULT_OPERATOR_NAMESPACE}); the trust "
        "policies of AWS roles come from its installation Secret there",
    )
    completion = commands.add_parser(
        "completion",
        help="print a bash, zsh or fish completion script",
        description=COMPLETION_HELP,
        formatter_class=raw,
    )
    completion.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError("a port number from 0 (any free port) to 65535")
    return int(value)


def _access(args: argparse.Namespace) -> api.Access:
    from cloudcred.cli import api

    return api.Access(args.kubeconfig, args.context, args.as_user, tuple(args.as_groups))


def run_command(args: argparse.Namespace, stdin: IO[str] | None = None) -> int:
    """Runs ``args.command``; returns the exit code."""
    try:
        return _COMMANDS[args.command](args, stdin)
    except CliError as error:
        print(f"cloudcred: {error.message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("cloudcred: interrupted", file=sys.stderr)
        return 130


def _list(args: argparse.Namespace, stdin: IO[str] | None) -> int:
    from cloudcred.cli import api, views

    kube = api.connect(_access(args))
    return views.list_command(
        kube, args.namespace or kube.namespace, args.all_namespaces, args.output
    )


def _usage(args: argparse.Namespace, stdin: IO[str] | None) -> int:
    from cloudcred.cli import api, views

    kube = api.connect(_access(args))
    return views.usage_command(
        kube, args.namespace or kube.namespace, args.name, args.all_namespaces, args.output
    )


def _permissions(args: argparse.Namespace, stdin: IO[str] | None) -> int:
    from cloudcred.cli import api
    from cloudcred.cli.permissions import permissions_command

    kube = api.connect(_access(args))
    return permissions_command(kube, args.namespace or kube.namespace, args.name, args.output)


def _rotate(args: argparse.Namespace, stdin: IO[str] | None) -> int:
    from cloudcred.cli import api, rotate
    from cloudcred.cli.errors import UsageError

    try:
        timeout = rotate.parse_timeout(args.timeout)
    except argparse.ArgumentTypeError as error:
        raise UsageError(f"--timeout: {error}") from None
    # Checked here, not by argparse choices: a refused value is never echoed (it could
    # be a key typed in the wrong place).
    if args.output is not None and not args.gitops:
        raise UsageError("-o: only with --gitops (without it, rotate changes the credential)")
    if args.output is not None and args.output not in rotate.GITOPS_FORMATS:
        raise UsageError("-o: choose yaml or json")
    if args.now and (args.gitops or args.from_file):
        raise UsageError("--now: the operator makes the key; --from-file and --gitops give one")
    kube = api.connect(_access(args))
    if args.now:
        return rotate.rotate_now(kube, rotate.Request(
            args.namespace or kube.namespace, args.name, None, timeout, wait=not args.no_wait,
            gitops=None,
        ))  # fmt: skip
    request = rotate.Request(
        args.namespace or kube.namespace,
        args.name,
        args.from_file,
        timeout,
        wait=not args.no_wait,
        gitops=(args.output or "yaml") if args.gitops else None,
    )
    return rotate.rotate_command(kube, request, sys.stdin if stdin is None else stdin)


def _trust_policy(args: argparse.Namespace, stdin: IO[str] | None) -> int:
    from cloudcred.cli import api, trust

    kube = api.connect(_access(args))
    return trust.trust_policy_command(
        kube,
        args.namespace or kube.namespace,
        args.name,
        args.output,
        args.principal,
        args.operator_namespace,
    )


def _console(args: argparse.Namespace, stdin: IO[str] | None) -> int:
    import asyncio
    import logging

    from cloudcred.cli import api
    from cloudcred.console import server

    # The console's own loggers only: the Kubernetes client's DEBUG logs would show
    # response bodies.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    if args.verbose:
        logging.getLogger("cloudcred.console").setLevel(logging.INFO)
    kube = api.connect(_access(args))
    namespace = None if args.all_namespaces else (args.namespace or kube.namespace)
    signal.signal(signal.SIGINT, _stop_within(CONSOLE_STOP_SECONDS))
    try:
        asyncio.run(
            server.serve(
                kube,
                namespace,
                args.port,
                open_browser=not args.no_browser,
                operator_namespace=args.operator_namespace,
            )
        )
    except KeyboardInterrupt:  # Ctrl-C is how the console stops
        print("cloudcred console: stopped", file=sys.stderr)
    return 0


CONSOLE_STOP_SECONDS = 5.0


def _stop_within(seconds: float) -> Callable[[int, Any], None]:
    """A SIGINT handler: stop as Ctrl-C does (KeyboardInterrupt), and if the clean stop
    takes longer than ``seconds`` (a request to the API server in flight, a stream a
    browser holds open), end the process anyway: Ctrl-C always stops the console."""

    def interrupted(signum: int, frame: Any) -> None:
        def force() -> None:
            print("cloudcred console: stopped", file=sys.stderr, flush=True)
            os._exit(0)

        timer = threading.Timer(seconds, force)
        timer.daemon = True
        timer.start()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: at once
        raise KeyboardInterrupt

    return interrupted


def _completion(args: argparse.Namespace, stdin: IO[str] | None) -> int:
    from cloudcred.cli import completion

    sys.stdout.write(completion.script(args.shell))
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, IO[str] | None], int]] = {
    "list": _list,
    "usage": _usage,
    "permissions": _permissions,
    "rotate": _rotate,
    "trust-policy": _trust_policy,
    "console": _console,
    "completion": _completion,
}


def complete(parser: argparse.ArgumentParser, words: list[str]) -> int:
    """``cloudcred __complete WORD...``: what the completion scripts call."""
    from cloudcred.cli import completion

    sys.stdout.write(completion.complete(parser, words))
    return 0
