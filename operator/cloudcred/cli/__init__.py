"""The command-line companion: ``cloudcred list | usage | rotate | trust-policy`` (also
``kubectl cloudcred``).

``add_commands`` puts the subcommands on the ``cloudcred`` parser; ``run_command`` runs
one and turns every failure into one ``cloudcred: ...`` line on stderr and an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import IO, Any

from cloudcred.cli.errors import CliError

COMMANDS = ("list", "usage", "rotate", "trust-policy")

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

""" + EXIT_CODES.format(extra="")

USAGE_HELP = """\
Shows the clusters bound to a CloudCredential, in every namespace, and whether each
one is deployed with the credential's current revision:

  UP TO DATE    yes: deployed with the current revision; pending: marked for
                redeploy (or waiting for its first deployment); no: neither

""" + EXIT_CODES.format(extra="")

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

A credential without a key (AWS roleArn, GCP workload identity) has nothing to rotate.

examples:
  aws iam create-access-key --user-name deployer | cloudcred rotate aws-prod -n acme
  cloudcred rotate gcp-staging -n acme --from-file key.json --timeout 30m
  az ad app credential reset --id $APP_ID | kubectl cloudcred rotate azure-prod

"""
    + EXIT_CODES.format(extra=",\n     the new key was refused by the provider")
    + """\
  3  timed out (--timeout, default 10m): the new key stays configured
"""
)

TRUST_POLICY_HELP = """\
Prints the trust policy the IAM role of an AWS role credential must have, or a
CloudFormation template that creates that role (-o cloudformation).

The operator, not the credential's author, determines the ExternalId
(status.externalId, from the namespace's UID and the credential's name); the policy
lets the operator's principal (status.operatorPrincipal, or --principal) call
sts:AssumeRole only with that ExternalId, and sts:TagSession only with the
credential's namespace and name as session tags.

examples:
  cloudcred trust-policy aws-prod -n acme > trust.json
  aws iam update-assume-role-policy --role-name cloudcred-acme --policy-document file://trust.json
  cloudcred trust-policy aws-prod -n acme -o cloudformation > role.json
  aws cloudformation deploy --template-file role.json --stack-name cloudcred-acme \\
      --capabilities CAPABILITY_NAMED_IAM

""" + EXIT_CODES.format(extra=", no status.externalId yet")


def _kube_options(all_namespaces: bool) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("cluster access")
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
            "-A", "--all-namespaces", action="store_true", help="every namespace (wins over -n)"
        )
    return parent


def add_commands(commands: Any) -> None:
    """Adds list, usage, rotate and trust-policy to ``commands`` (an argparse subparsers action)."""
    raw = argparse.RawDescriptionHelpFormatter
    commands.add_parser(
        "list",
        help="list CloudCredentials: key, clusters, verified, rollout",
        description=LIST_HELP,
        formatter_class=raw,
        parents=[_kube_options(all_namespaces=True)],
    )
    usage = commands.add_parser(
        "usage",
        help="show the clusters that use a CloudCredential",
        description=USAGE_HELP,
        formatter_class=raw,
        parents=[_kube_options(all_namespaces=False)],
    )
    usage.add_argument("name", metavar="NAME", help="the CloudCredential")
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
        help="the operator's AWS principal (default: status.operatorPrincipal)",
    )


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

    kube = api.connect(args.kubeconfig, args.context)
    return views.list_command(kube, args.namespace or kube.namespace, args.all_namespaces)


def _usage(args: argparse.Namespace, stdin: IO[str] | None) -> int:
    from cloudcred.cli import api, views

    kube = api.connect(args.kubeconfig, args.context)
    return views.usage_command(kube, args.namespace or kube.namespace, args.name)


def _rotate(args: argparse.Namespace, stdin: IO[str] | None) -> int:
    from cloudcred.cli import api, rotate
    from cloudcred.cli.errors import UsageError

    try:
        timeout = rotate.parse_timeout(args.timeout)
    except argparse.ArgumentTypeError as error:
        raise UsageError(f"--timeout: {error}") from None
    kube = api.connect(args.kubeconfig, args.context)
    request = rotate.Request(
        args.namespace or kube.namespace, args.name, args.from_file, timeout, wait=not args.no_wait
    )
    return rotate.rotate_command(kube, request, sys.stdin if stdin is None else stdin)


def _trust_policy(args: argparse.Namespace, stdin: IO[str] | None) -> int:
    from cloudcred.cli import api, trust

    kube = api.connect(args.kubeconfig, args.context)
    return trust.trust_policy_command(
        kube, args.namespace or kube.namespace, args.name, args.output, args.principal
    )


_COMMANDS: dict[str, Callable[[argparse.Namespace, IO[str] | None], int]] = {
    "list": _list,
    "usage": _usage,
    "rotate": _rotate,
    "trust-policy": _trust_policy,
}
