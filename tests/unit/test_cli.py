"""The command-line companion without a cluster: key input per provider, Secret names,
the command line itself, and the pure parts of list, usage and rotate."""

from __future__ import annotations

import argparse
import importlib
import io
import json
import re
import tomllib
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from cloudcred.__main__ import _parser, kubectl_complete, main
from cloudcred.cli import api, completion, keys, output, rotate, views
from cloudcred.cli.errors import CliError, TimedOutError, UsageError
from tests.kube import ROOT

# A secret value that must never appear in any output or message.
SENTINEL = "SENTINELsecretDoNotPrint0123456789abcdef"
SCW_SENTINEL = "5e471e1e-0000-4000-8000-5e471e1e5e47"  # a secret key has to be a UUID
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

AWS_SPEC = {
    "provider": "AWS",
    "aws": {
        "accessKeyId": "AKIAOLDOLDOLDOLDOLD1",
        "secretAccessKeyRef": {"name": "aws-keys", "key": "secretAccessKey"},
    },
}
GCP_SPEC = {"provider": "GCP", "gcp": {"serviceAccountKeyRef": {"name": "gcp-key", "key": "key"}}}
AZURE_SPEC = {
    "provider": "AZURE",
    "azure": {
        "tenantId": TENANT,
        "subscriptionId": "0b1f6471-1bf0-4dda-aec3-cb9272f09590",
        "clientId": CLIENT,
        "clientSecretRef": {"name": "azure-secret", "key": "clientSecret"},
    },
}
SCW_SPEC = {
    "provider": "SCALEWAY",
    "scaleway": {
        "accessKey": "SCWOLDOLDOLDOLDOLD12",
        "secretKeyRef": {"name": "scw-keys", "key": "secretKey"},
        "projectId": "6a0f2c2e-1a7b-4c11-9f0e-8d4a3b2c1d0e",
    },
}


def target(spec: dict[str, Any], name: str = "cred") -> keys.Target:
    return keys.rotation_target("acme", name, spec)


def gcp_key(**changes: Any) -> str:
    info = {
        "type": "service_account",
        "project_id": "acme-staging",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": f"-----BEGIN PRIVATE KEY-----\n{SENTINEL}\n-----END PRIVATE KEY-----\n",
        "client_email": "deployer@acme-staging.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    info.update(changes)
    return json.dumps({k: v for k, v in info.items() if v is not None}, indent=2)


# --- accepted input, per provider ---------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"AccessKey": {"UserName": "deployer", "AccessKeyId": "AKIANEWNEWNEWNEWNEW1",
                                  "Status": "Active", "SecretAccessKey": SENTINEL,
                                  "CreateDate": "2026-11-22T10:00:00+00:00"}}, indent=4),
        json.dumps({"accessKeyId": "AKIANEWNEWNEWNEWNEW1", "secretAccessKey": SENTINEL}),
        f"AWS_ACCESS_KEY_ID=AKIANEWNEWNEWNEWNEW1\nAWS_SECRET_ACCESS_KEY={SENTINEL}\n",
        f"# from the console\nexport AWS_ACCESS_KEY_ID='AKIANEWNEWNEWNEWNEW1'\n\n"
        f'export AWS_SECRET_ACCESS_KEY="{SENTINEL}"\nAWS_DEFAULT_REGION=eu-west-3\n',
    ],
    ids=["create-access-key", "flat-json", "key-value", "export-quoted"],
)  # fmt: skip
def test_aws_input_formats(text: str) -> None:
    key = keys.parse_key(target(AWS_SPEC), text)
    assert key.public_id == "AKIANEWNEWNEWNEWNEW1"
    assert key.secret.get_secret_value() == SENTINEL
    assert SENTINEL not in repr(key)


def test_gcp_key_file() -> None:
    key = keys.parse_key(target(GCP_SPEC), gcp_key())
    assert key.secret.get_secret_value() == gcp_key().strip()
    assert key.key_id == "0123456789abcdef0123456789abcdef01234567"
    assert key.account == "deployer@acme-staging.iam.gserviceaccount.com"
    assert key.public_id is None
    assert SENTINEL not in repr(key)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"appId": CLIENT, "password": SENTINEL, "tenant": TENANT,
                    "displayName": "deployer"}),
        json.dumps({"appId": CLIENT.upper(), "password": SENTINEL, "tenant": TENANT.upper()}),
        f"\n{SENTINEL}\n",
    ],
    ids=["az-reset", "upper-case-ids", "single-line"],
)  # fmt: skip
def test_azure_input_formats(text: str) -> None:
    key = keys.parse_key(target(AZURE_SPEC), text)
    assert key.secret.get_secret_value() == SENTINEL
    assert key.public_id is None


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"access_key": "SCWNEWNEWNEWNEWNEW12", "secret_key": SCW_SENTINEL,
                    "application_id": CLIENT, "description": "rotated"}),
        f"SCW_ACCESS_KEY=SCWNEWNEWNEWNEWNEW12\nSCW_SECRET_KEY={SCW_SENTINEL}\n",
    ],
    ids=["scw-json", "key-value"],
)  # fmt: skip
def test_scaleway_input_formats(text: str) -> None:
    key = keys.parse_key(target(SCW_SPEC), text)
    assert key.public_id == "SCWNEWNEWNEWNEWNEW12"
    assert key.secret.get_secret_value() == SCW_SENTINEL


# --- bad input names what is wrong, never the input ---------------------------------------

BAD_INPUTS = [
    (AWS_SPEC, "", "no key material"),
    (AWS_SPEC, SENTINEL, "line 1 is not KEY=VALUE"),
    (AWS_SPEC, '{"AccessKey": {"AccessKeyId": "AKIANEWNEWNEWNEWNEW1"', "not valid JSON"),
    (AWS_SPEC, json.dumps({"AccessKey": {"AccessKeyId": "AKIANEWNEWNEWNEWNEW1"}}),
     "AccessKey.SecretAccessKey is missing"),
    (AWS_SPEC, json.dumps({"accessKeyId": SENTINEL, "secretAccessKey": SENTINEL}),
     "accessKeyId is not an access key id"),
    (AWS_SPEC, json.dumps({"accessKeyId": "AKIANEWNEWNEWNEWNEW1", "secretAccessKey": 12}),
     "secretAccessKey must be a string"),
    (AWS_SPEC, json.dumps({"user": SENTINEL}), "neither AccessKey nor accessKeyId"),
    (AWS_SPEC, f"AWS_ACCESS_KEY_ID=AKIANEWNEWNEWNEWNEW1\nAWS_SECRET_ACCESS_KEY={SENTINEL} x",
     "AWS_SECRET_ACCESS_KEY contains spaces"),
    (AWS_SPEC, f"AWS_SECRET_ACCESS_KEY={SENTINEL}", "AWS_ACCESS_KEY_ID is missing"),
    (AWS_SPEC, f"AWS_ACCESS_KEY_ID=ASIANEWNEWNEWNEWNEW1\nAWS_SECRET_ACCESS_KEY={SENTINEL}\n"
               f"AWS_SESSION_TOKEN={SENTINEL}", "AWS_SESSION_TOKEN is set"),
    (AWS_SPEC, f"AWS_ACCESS_KEY_ID=AKIANEWNEWNEWNEWNEW1\nAWS_ACCESS_KEY_ID={SENTINEL}",
     "AWS_ACCESS_KEY_ID is set twice"),
    (GCP_SPEC, SENTINEL, "expected a service-account key file"),
    (GCP_SPEC, gcp_key(type="authorized_user"), '"type" is not "service_account"'),
    (GCP_SPEC, gcp_key(private_key=None), "private_key is missing"),
    (GCP_SPEC, gcp_key(private_key=SENTINEL), "private_key is not a PEM private key"),
    (GCP_SPEC, gcp_key(client_email=None), "client_email is missing"),
    (GCP_SPEC, gcp_key(client_email=SENTINEL), "client_email is not a service-account e-mail"),
    (GCP_SPEC, "[1, 2]", "expected a service-account key file"),
    (AZURE_SPEC, json.dumps({"appId": CLIENT, "password": SENTINEL,
                             "tenant": "11111111-2222-4333-8444-555555555555"}),
     "tenant 11111111-2222-4333-8444-555555555555 is not the credential's spec.azure.tenantId"),
    (AZURE_SPEC, json.dumps({"appId": SENTINEL, "password": SENTINEL, "tenant": TENANT}),
     "appId (not shown: not a UUID) is not the credential's spec.azure.clientId"),
    (AZURE_SPEC, json.dumps({"appId": CLIENT, "tenant": TENANT}), "password is missing"),
    (AZURE_SPEC, f"{SENTINEL}\n{SENTINEL}\n", "got 2 lines"),
    (AZURE_SPEC, f"{SENTINEL} {SENTINEL}", "the client secret contains spaces"),
    (SCW_SPEC, json.dumps({"access_key": "SCWNEWNEWNEWNEWNEW12", "secret_key": SENTINEL}),
     "secret_key is not a Scaleway secret key (a UUID)"),
    (SCW_SPEC, json.dumps({"access_key": SENTINEL, "secret_key": SCW_SENTINEL}),
     "access_key is not a Scaleway access key"),
    (SCW_SPEC, f"SCW_ACCESS_KEY=SCWNEWNEWNEWNEWNEW12\nSCW_TOKEN={SENTINEL}",
     "SCW_SECRET_KEY is missing"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "text", "expected"), BAD_INPUTS)
def test_bad_input_is_named_and_never_echoed(
    spec: dict[str, Any], text: str, expected: str
) -> None:
    with pytest.raises(UsageError) as raised:
        keys.parse_key(target(spec), text)
    assert expected in raised.value.message
    assert raised.value.exit_code == 2
    assert SENTINEL not in str(raised.value)
    assert SCW_SENTINEL not in str(raised.value)


@pytest.mark.parametrize(
    ("spec", "uses"),
    [
        ({"provider": "AWS", "aws": {"roleArn": "arn:aws:iam::123456789012:role/deployer"}},
         "uses an IAM role (spec.aws.roleArn)"),
        ({"provider": "GCP", "gcp": {
            "serviceAccountEmail": "deployer@acme.iam.gserviceaccount.com",
            "workloadIdentityProvider": "projects/1/locations/global/workloadIdentityPools/"
                                        "pool/providers/github"}},
         "uses an IAM role through workload identity federation"),
    ],
)  # fmt: skip
def test_credentials_without_a_key_have_nothing_to_rotate(spec: dict[str, Any], uses: str) -> None:
    with pytest.raises(UsageError) as raised:
        keys.rotation_target("acme", "role", spec)
    assert raised.value.message.startswith("nothing to rotate: acme/role ")
    assert uses in raised.value.message
    assert raised.value.exit_code == 2


def test_rotation_target_names_the_fields_switched_together() -> None:
    aws = target(AWS_SPEC)
    assert (aws.block, aws.ref_field, aws.secret_name, aws.secret_key) == (
        "aws", "secretAccessKeyRef", "aws-keys", "secretAccessKey")  # fmt: skip
    assert (aws.public_field, aws.public_id) == ("accessKeyId", "AKIAOLDOLDOLDOLDOLD1")
    assert target(SCW_SPEC).public_field == "accessKey"
    assert target(GCP_SPEC).public_field is None
    assert target(AZURE_SPEC).ref_field == "clientSecretRef"


# --- Secret names --------------------------------------------------------------------------

NOW = datetime(2026, 11, 22, 9, 5, 7, tzinfo=UTC)


def test_secret_name_is_the_credential_and_utc_time() -> None:
    assert keys.new_secret_name("aws-prod", NOW) == "aws-prod-20261122090507"
    paris = datetime.fromisoformat("2026-11-22T10:05:07+01:00")
    assert keys.new_secret_name("aws-prod", paris) == "aws-prod-20261122090507"


@pytest.mark.parametrize(
    "name",
    ["a" * 253, "a" * 237 + "-bcd", "a" * 237 + ".b" + "c" * 14, "x." + "y" * 251, "a"],
)
def test_secret_name_stays_a_dns_subdomain(name: str) -> None:
    secret_name = keys.new_secret_name(name, NOW)
    assert len(secret_name) <= 253
    assert secret_name.endswith("-20261122090507")
    assert DNS_SUBDOMAIN.fullmatch(secret_name), secret_name


# --- the command line ----------------------------------------------------------------------


def subparser(name: str) -> argparse.ArgumentParser:
    parser = _parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]  # type: ignore[no-any-return]


def test_rotate_takes_no_secret_on_the_command_line() -> None:
    """The key is read from stdin or a file: no option or argument could carry it."""
    options = {opt for action in subparser("rotate")._actions for opt in action.option_strings}
    assert options == {"-h", "--help", "--kubeconfig", "--context", "-n", "--namespace",
                       "--as", "--as-group", "--from-file", "--timeout", "--no-wait",
                       "--now", "--gitops", "-o", "--output"}  # fmt: skip
    positionals = [a.dest for a in subparser("rotate")._actions if not a.option_strings]
    assert positionals == ["name"]


@pytest.mark.parametrize(
    "argv",
    [
        ["rotate", "cred", SENTINEL],
        ["rotate", "cred", "--secret", SENTINEL],
        ["rotate"],
        ["list", "extra"],
        ["list", "-o", "table"],
        ["usage"],
        ["completion", "tcsh"],
        ["bogus"],
        [],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert SENTINEL not in err
    if SENTINEL in argv:
        assert "never from the command line" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rotate", "cred", "-o", "yaml"], "cloudcred: -o: only with --gitops"),
        (["rotate", "cred", "--gitops", "-o", SENTINEL], "cloudcred: -o: choose yaml or json"),
        (["list", "--as-group", "team"], "cloudcred: --as-group needs --as"),
    ],
)
def test_flag_combinations_exit_2_without_echo(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert SENTINEL not in err


def test_bad_timeout_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rotate", "cred", "--timeout", "10 minutes"]) == 2
    assert capsys.readouterr().err.startswith("cloudcred: --timeout: not a duration")


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "crds", "list", "usage", "rotate", "completion"):
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE), command


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("list", ["KEY OR ROLE", "UNUSED SINCE", "-A, --all-namespaces", "exit codes"]),
        ("list", ["-o wide adds", "jq -r", "--as USER", "--as-group GROUP"]),
        ("usage", ["UP TO DATE", "exit codes", "-A, --all-namespaces", "cluster-wide"]),
        ("completion", ["source <(cloudcred completion bash)", "exit codes"]),
        ("rotate", ["aws iam create-access-key", "SCW_SECRET_KEY", "az ad app credential reset",
                    '"type": "service_account"', "3  timed out", "never from the command line"]),
    ],
)  # fmt: skip
def test_subcommand_help_documents_input_and_exit_codes(
    command: str, expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    for text in expected:
        assert text in out


def test_missing_kubeconfig_is_one_line_exit_1(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list", "--kubeconfig", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err == f"cloudcred: kubeconfig {tmp_path / 'nope'} does not exist\n"


def test_empty_kubeconfig_env_is_reported(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert main(["usage", "cred"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cloudcred: no usable kubeconfig at ")
    assert "Traceback" not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400)]
)
def test_timeout_durations(text: str, seconds: float) -> None:
    assert rotate.parse_timeout(text) == seconds


@pytest.mark.parametrize(("seconds", "text"), [(30, "30s"), (300, "5m"), (3600, "1h"), (90, "90s")])
def test_durations_are_shown_as_typed(seconds: float, text: str) -> None:
    assert rotate.format_duration(seconds) == text


@pytest.mark.parametrize("text", ["", "10", "5 m", "1d", "0s", "-5m"])
def test_bad_timeouts(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        rotate.parse_timeout(text)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_key_is_not_read_from_a_terminal() -> None:
    with pytest.raises(UsageError) as raised:
        rotate.read_input(None, Terminal(SENTINEL))
    assert "stdin is a terminal" in raised.value.message
    assert "--from-file" in raised.value.message
    with pytest.raises(UsageError):
        rotate.read_input("-", None)


def test_key_is_read_from_a_pipe_or_a_file(tmp_path: Any) -> None:
    assert rotate.read_input(None, io.StringIO(SENTINEL)) == SENTINEL
    path = tmp_path / "key.json"
    path.write_text(gcp_key())
    assert rotate.read_input(str(path), Terminal("")) == gcp_key()
    with pytest.raises(UsageError, match=r"cannot read .*: No such file"):
        rotate.read_input(str(tmp_path / "nope"), None)
    binary = tmp_path / "key.bin"
    binary.write_bytes(b"\xff\xfe" + SENTINEL.encode())
    with pytest.raises(UsageError, match="is not UTF-8 text") as raised:
        rotate.read_input(str(binary), None)
    assert SENTINEL not in str(raised.value)


# --- what rotate writes ----------------------------------------------------------------------


def aws_key() -> keys.NewKey:
    text = json.dumps({"accessKeyId": "AKIANEWNEWNEWNEWNEW1", "secretAccessKey": SENTINEL})
    return keys.parse_key(target(AWS_SPEC), text)


def test_one_merge_patch_switches_ref_and_key_id_together() -> None:
    patch = rotate.switch_patch(target(AWS_SPEC), "cred-20261122090507", aws_key(), "42")
    assert patch == {
        "metadata": {"resourceVersion": "42"},
        "spec": {"aws": {"secretAccessKeyRef": {"name": "cred-20261122090507"},
                         "accessKeyId": "AKIANEWNEWNEWNEWNEW1"}},
    }  # fmt: skip
    gcp = keys.parse_key(target(GCP_SPEC), gcp_key())
    assert rotate.switch_patch(target(GCP_SPEC), "s", gcp, "7")["spec"] == {
        "gcp": {"serviceAccountKeyRef": {"name": "s"}}
    }


def test_new_secret_is_owned_by_the_credential_and_keeps_the_key_name() -> None:
    body = rotate.secret_body(target(AWS_SPEC), "uid-1", "cred-20261122090507", aws_key())
    assert body["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "cloudcred-cli"}
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": "cloudcred.io/v1alpha1", "kind": "CloudCredential", "name": "cred",
         "uid": "uid-1"}
    ]  # fmt: skip
    assert body["stringData"] == {"secretAccessKey": SENTINEL}


def test_the_key_in_use_is_refused() -> None:
    same = json.dumps({"accessKeyId": "AKIAOLDOLDOLDOLDOLD1", "secretAccessKey": SENTINEL})
    aws = target(AWS_SPEC)
    old = rotate.old_key(aws, {}, None)
    with pytest.raises(UsageError, match="is the key already in use") as raised:
        rotate.check_new(aws, keys.parse_key(aws, same), old)
    assert SENTINEL not in str(raised.value)
    gcp = target(GCP_SPEC)
    new = keys.parse_key(gcp, gcp_key())
    old_gcp = rotate.old_key(gcp, {}, ("0123456789abcdef0123456789abcdef01234567", "x@y"))
    with pytest.raises(UsageError, match="is the key already in use"):
        rotate.check_new(gcp, new, old_gcp)
    rotate.check_new(aws, aws_key(), old)  # a new key passes


def test_delete_advice_per_provider() -> None:
    identity = {"identity": "arn:aws:iam::123456789012:user/ci/deployer"}
    aws = rotate.old_key(target(AWS_SPEC), identity, None)
    assert aws.commands == [
        "aws iam delete-access-key --access-key-id AKIAOLDOLDOLDOLDOLD1 --user-name deployer"
    ]
    assert rotate.old_key(target(AWS_SPEC), {}, None).commands == [
        "aws iam delete-access-key --access-key-id AKIAOLDOLDOLDOLDOLD1"
    ]
    gcp = rotate.old_key(target(GCP_SPEC), {}, ("abc123", "sa@p.iam.gserviceaccount.com"))
    assert gcp.commands == [
        "gcloud iam service-accounts keys delete abc123 --iam-account sa@p.iam.gserviceaccount.com"
    ]
    unknown = rotate.old_key(target(GCP_SPEC), {"publicId": "sa@p.iam.gserviceaccount.com"}, None)
    assert "keys list --iam-account sa@p.iam.gserviceaccount.com" in unknown.commands[0]
    azure = rotate.old_key(target(AZURE_SPEC), {}, None)
    assert azure.commands[0].startswith(f"az ad app credential list --id {CLIENT}")
    assert azure.commands[1] == f"az ad app credential delete --id {CLIENT} --key-id KEY_ID"
    scw = rotate.old_key(target(SCW_SPEC), {}, None)
    assert scw.commands == ["scw iam api-key delete SCWOLDOLDOLDOLDOLD12"]


def test_done_message_says_what_is_safe_to_delete() -> None:
    aws = target(AWS_SPEC)
    rollout = rotate.Rollout("v1-bbbbbbbbbbbb", 3, 3, True, "")
    message = rotate.done_message(aws, rollout, rotate.old_key(aws, {}, None), [])
    assert message.splitlines() == [
        "All 3 clusters use the new key (revision v1-bbbbbbbbbbbb).",
        "The old key AKIAOLDOLDOLDOLDOLD1 is no longer used by any cluster: delete it at the "
        "provider:",
        "  aws iam delete-access-key --access-key-id AKIAOLDOLDOLDOLDOLD1",
        "The previous Secret acme/aws-keys is no longer referenced: "
        "kubectl delete secret -n acme aws-keys",
    ]
    shared = rotate.done_message(aws, rollout, rotate.old_key(aws, {}, None), ["acme/other"])
    assert "still referenced by acme/other: keep it" in shared


def test_the_old_key_is_not_offered_for_deletion_while_another_credential_names_it() -> None:
    """A person is told to delete the old key at the provider only when no credential
    the user may list names it; one that could not list every namespace is told so."""
    aws = target(AWS_SPEC)
    rollout = rotate.Rollout("v1-bbbbbbbbbbbb", 3, 3, True, "")
    old = rotate.old_key(aws, {}, None)
    items = [
        {"metadata": {"namespace": "acme", "name": "cred"}, "spec": AWS_SPEC},
        {"metadata": {"namespace": "team-b", "name": "copy"}, "spec": AWS_SPEC},
        {"metadata": {"namespace": "team-c", "name": "scw"}, "spec": SCW_SPEC},
    ]
    users = rotate.KeyUsers(rotate.naming_the_key(items, aws))
    assert users.names == ["team-b/copy"]
    kept = rotate.done_message(aws, rollout, old, [], users)
    assert "team-b/copy names it too: keep it at the provider" in kept
    assert "aws iam delete-access-key" not in kept
    partial = rotate.done_message(aws, rollout, old, [], rotate.KeyUsers([], "HTTP 403"))
    assert "aws iam delete-access-key --access-key-id AKIAOLDOLDOLDOLDOLD1" in partial
    assert partial.splitlines()[3] == (
        "Not every namespace could be searched (HTTP 403): check that no other credential "
        "names AKIAOLDOLDOLDOLDOLD1 first."
    )


def test_other_credentials_sharing_the_old_secret_are_found() -> None:
    items = [
        {"metadata": {"name": "cred"}, "spec": AWS_SPEC},
        {"metadata": {"name": "twin"}, "spec": AWS_SPEC},
        {"metadata": {"name": "role"}, "spec": {"provider": "AWS", "aws": {"roleArn": "x"}}},
        {"metadata": {"name": "scw"}, "spec": SCW_SPEC},
    ]
    assert rotate.referencing(items, target(AWS_SPEC)) == ["acme/twin"]


# --- waiting for the operator ----------------------------------------------------------------


def credential(generation: int, revision: str, verified: tuple[str, str, str] = ("True",
               "Verified", "AWS accepted the credential"), rollout: tuple[int, int] | None = None,
               complete: bool = False) -> dict[str, Any]:  # fmt: skip
    status, reason, message = verified
    conditions = [{"type": "Verified", "status": status, "reason": reason, "message": message,
                   "observedGeneration": generation}]  # fmt: skip
    body: dict[str, Any] = {"observedGeneration": generation, "revision": revision,
                            "conditions": conditions}  # fmt: skip
    if rollout:
        body["rollout"] = {"revision": revision, "updated": rollout[0], "total": rollout[1]}
        conditions.append({"type": "RolloutComplete", "status": "True" if complete else "False",
                           "reason": "RolloutComplete" if complete else "RolloutInProgress",
                           "message": "waiting for acme/b"})  # fmt: skip
    return {"metadata": {"generation": generation}, "status": body}


class Script:
    """Answers the waiter's polls from a list, the last one forever; fake time."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers, self.now, self.shown = answers, 0.0, []

    def fetch(self) -> dict[str, Any]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def show(self, description: str, completed: int | None, total: int | None) -> None:
        self.shown.append((description, completed, total))

    def waiter(self, timeout: float = 60) -> rotate.Waiter:
        return rotate.Waiter(self.fetch, timeout, self.show, clock=lambda: self.now,
                             sleep=self.sleep)  # fmt: skip


def test_wait_follows_verification_then_rollout() -> None:
    script = Script([
        credential(1, "v1-aaaaaaaaaaaa"),
        credential(2, "v1-bbbbbbbbbbbb", ("False", "ProviderUnreachable", "timeout")),
        credential(2, "v1-bbbbbbbbbbbb"),
        credential(2, "v1-bbbbbbbbbbbb", rollout=(1, 2)),
        credential(2, "v1-bbbbbbbbbbbb", rollout=(2, 2), complete=True),
    ])  # fmt: skip
    waiter = script.waiter()
    assert waiter.verified(2, "v1-aaaaaaaaaaaa") == "v1-bbbbbbbbbbbb"
    rollout = waiter.rolled_out("v1-bbbbbbbbbbbb")
    assert (rollout.updated, rollout.total, rollout.complete) == (2, 2, True)
    assert script.shown == [
        ("1/2 clusters on revision v1-bbbbbbbbbbbb", 1, 2),
        ("2/2 clusters on revision v1-bbbbbbbbbbbb", 2, 2),
    ]


def test_a_refused_key_stops_with_the_reason() -> None:
    refused = ("False", "InvalidCredentials", "AWS refused the key: InvalidClientTokenId")
    script = Script([credential(1, "v1-aaaaaaaaaaaa"), credential(2, "v1-bbbbbbbbbbbb", refused)])
    with pytest.raises(CliError) as raised:
        script.waiter().verified(2, "v1-aaaaaaaaaaaa")
    assert raised.value.exit_code == 1
    assert raised.value.message.startswith(
        "the new key was refused: InvalidCredentials: AWS refused the key: InvalidClientTokenId"
    )
    assert "fix the key and run rotate again" in raised.value.message


def test_timeouts_say_how_far_it_got() -> None:
    script = Script([credential(1, "v1-aaaaaaaaaaaa")])
    with pytest.raises(TimedOutError) as raised:
        script.waiter(timeout=30).verified(2, "v1-aaaaaaaaaaaa")
    assert raised.value.exit_code == 3
    assert raised.value.message == (
        "timed out after 30s: the operator has not picked up generation 2 yet"
    )
    script = Script([credential(2, "v1-bbbbbbbbbbbb", rollout=(1, 3))])
    with pytest.raises(TimedOutError) as raised:
        script.waiter(timeout=300).rolled_out("v1-bbbbbbbbbbbb")
    assert raised.value.message == (
        "timed out after 5m: 1/3 clusters on revision v1-bbbbbbbbbbbb (waiting for acme/b)"
    )


# --- list and usage --------------------------------------------------------------------------


def test_list_rows() -> None:
    now = datetime(2026, 11, 22, tzinfo=UTC)
    good = {
        "metadata": {"namespace": "acme", "name": "aws-prod"},
        "spec": {"provider": "AWS"},
        "status": {"publicId": "AKIAOLDOLDOLDOLDOLD1", "clusterCount": 2,
                   "keyCreatedTime": "2026-11-10T08:00:00Z",
                   "rollout": {"revision": "v1-a", "updated": 1, "total": 2},
                   "conditions": [{"type": "Verified", "status": "True", "reason": "Verified"}]},
    }  # fmt: skip
    bad = {
        "metadata": {"namespace": "acme", "name": "aws-old"},
        "spec": {"provider": "AWS"},
        "status": {"clusterCount": 0, "unusedSince": "2026-11-01T00:00:00Z",
                   "conditions": [{"type": "Verified", "status": "False",
                                   "reason": "InvalidCredentials"}]},
    }  # fmt: skip
    new = {"metadata": {"namespace": "beta", "name": "new"}, "spec": {"provider": "GCP"}}
    headers, rows = views.list_rows([good, new, bad], now, with_namespace=True)
    assert headers == ["NAMESPACE", "NAME", "PROVIDER", "KEY OR ROLE", "CLUSTERS", "VERIFIED",
                       "KEY AGE", "NEXT ROTATION", "UNUSED SINCE", "ROLLOUT"]  # fmt: skip
    assert rows == [
        ["acme", "aws-old", "AWS", "-", "0", "False (InvalidCredentials)", "-", "-",
         "2026-11-01T00:00:00Z", "-"],
        ["acme", "aws-prod", "AWS", "AKIAOLDOLDOLDOLDOLD1", "2", "True", "11d", "-", "-", "1/2"],
        ["beta", "new", "GCP", "-", "-", "-", "-", "-", "-", "-"],
    ]  # fmt: skip
    assert views.list_rows([good], now, with_namespace=False)[1][0][0] == "aws-prod"


def test_usage_keeps_the_listed_clusters_and_compares_revisions() -> None:
    cred = {
        "metadata": {"namespace": "acme", "name": "aws-prod"},
        "status": {"revision": "v1-b", "clusterCount": 3, "clusters": [
            {"namespace": "acme", "name": "eu"}, {"namespace": "acme", "name": "us"},
            {"namespace": "team", "name": "ap"}]},
    }  # fmt: skip

    def cluster(ns: str, name: str, deployed: str | None, pending: bool = False) -> dict:
        status: dict[str, Any] = {"deployedRevision": deployed} if deployed else {}
        status["conditions"] = [{"type": "RedeployPending", "status": str(pending)}]
        return {"metadata": {"namespace": ns, "name": name},
                "spec": {"region": "eu-west-3", **({"deploy": "External"} if pending else {})},
                "status": status}  # fmt: skip

    candidates = [cluster("acme", "us", "v1-a", pending=True), cluster("acme", "eu", "v1-b"),
                  cluster("other", "eu", "v1-b"), cluster("team", "ap", None)]  # fmt: skip
    view = views.usage_view(cred, views.bound_clusters(cred, candidates))
    assert view.header == (
        "CloudCredential acme/aws-prod, revision v1-b: 1 of 3 clusters on the current revision"
    )
    assert view.rows == [
        ["acme", "eu", "eu-west-3", "Operator", "v1-b", "yes"],
        ["acme", "us", "eu-west-3", "External", "v1-a", "pending"],
        ["team", "ap", "eu-west-3", "Operator", "-", "no"],
    ]


def test_tables_have_no_trailing_blanks(capsys: pytest.CaptureFixture[str]) -> None:
    views.print_table(["NAME", "KEY OR ROLE"], [["a[b]", "x" * 300], ["long-name", "y"]])
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["NAME        KEY OR ROLE", f"a[b]        {'x' * 300}", "long-name   y"]


def test_wide_adds_columns_after_the_default_ones() -> None:
    now = datetime(2026, 11, 22, tzinfo=UTC)
    cred = {
        "metadata": {"namespace": "acme", "name": "aws-prod"},
        "spec": AWS_SPEC,
        "status": {"revision": "v2-abc", "identity": "arn:aws:iam::123456789012:user/d",
                   "conditions": [{"type": "Ready", "status": "False", "reason": "Stalled"}]},
    }  # fmt: skip
    headers, rows = views.list_rows([cred], now, with_namespace=False, wide=True)
    assert headers[-5:] == ["ROLLOUT", "READY", "REVISION", "SECRET", "IDENTITY"]
    assert rows[0][-4:] == ["False (Stalled)", "v2-abc", "aws-keys",
                            "arn:aws:iam::123456789012:user/d"]  # fmt: skip
    role = {"metadata": {"namespace": "a", "name": "r"},
            "spec": {"provider": "AWS", "aws": {"roleArn": "arn:aws:iam::1:role/r"}}}  # fmt: skip
    assert views.list_rows([role], now, False, wide=True)[1][0][-2:] == ["-", "-"]


def test_json_and_yaml_are_a_kubectl_list() -> None:
    item = {"metadata": {"namespace": "acme", "name": "a"}, "spec": {"provider": "GCP"}}
    managed = {**item, "metadata": {**item["metadata"], "managedFields": [{"manager": "k"}]}}
    document = output.as_list([managed], "CloudCredential")
    assert document == {
        "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
        "items": [{"apiVersion": "cloudcred.io/v1alpha1", "kind": "CloudCredential", **item}],
    }  # fmt: skip
    assert json.loads(output.render(document, "json")) == document
    assert output.render(document, "json").startswith('{\n    "apiVersion": "v1",')
    assert yaml.safe_load(output.render(document, "yaml")) == document
    assert output.names([item], "CloudCredential") == "cloudcredential.cloudcred.io/a\n"


def test_usage_names_namespaces_it_could_not_read() -> None:
    listed = [{"namespace": "team", "name": "b"}, {"namespace": "acme", "name": "a"}]
    cred = {"metadata": {"namespace": "acme", "name": "p"},
            "status": {"revision": "v1", "clusterCount": 2, "clusters": listed}}  # fmt: skip
    assert views.usage_namespaces(cred) == ["acme", "team"]
    seen = {"metadata": {"namespace": "acme", "name": "a"}, "spec": {}, "status": {}}
    view = views.usage_view(cred, [seen], hidden=["team"])
    assert view.header.endswith("0 of 2 clusters on the current revision "
                                "(1 not shown: no access to Clusters in team)")  # fmt: skip


def test_field_selector_fallback_filters_by_reference() -> None:
    def cluster(name: str, ref: str | None) -> dict[str, Any]:
        spec = {"credentialRef": {"name": ref}} if ref else {}
        return {"metadata": {"name": name}, "spec": spec}

    found = api.referencing_clusters(
        [cluster("a", "p"), cluster("b", "q"), cluster("c", None)], "p"
    )
    assert [c["metadata"]["name"] for c in found] == ["a"]


# --- rotate --gitops --------------------------------------------------------------------------


def test_gitops_manifest_is_the_patched_spec_without_server_fields() -> None:
    credential = {
        "apiVersion": "cloudcred.io/v1alpha1", "kind": "CloudCredential",
        "metadata": {
            "name": "cred", "namespace": "acme", "uid": "u-1", "resourceVersion": "7",
            "generation": 3, "finalizers": ["cloudcred.io/finalizer"],
            "labels": {"team": "a"},
            "annotations": {"kopf.cloudcred.io/last-handled-configuration": "{}",
                            "kubectl.kubernetes.io/last-applied-configuration": "{}",
                            "cloudcred.io/rollout-paused": "true"},
            "managedFields": [{}],
        },
        "spec": {**AWS_SPEC, "verification": {"enabled": True}},
        "status": {"revision": "v2-a"},
    }  # fmt: skip
    target = keys.rotation_target("acme", "cred", credential["spec"])
    manifest = rotate.gitops_manifest(credential, target, "cred-20261122000000", aws_key())
    assert manifest == {
        "apiVersion": "cloudcred.io/v1alpha1", "kind": "CloudCredential",
        "metadata": {"name": "cred", "namespace": "acme", "labels": {"team": "a"},
                     "annotations": {"cloudcred.io/rollout-paused": "true"}},
        "spec": {"provider": "AWS", "verification": {"enabled": True}, "aws": {
            "accessKeyId": "AKIANEWNEWNEWNEWNEW1",
            "secretAccessKeyRef": {"name": "cred-20261122000000", "key": "secretAccessKey"}}},
    }  # fmt: skip
    assert credential["spec"]["aws"]["accessKeyId"] == "AKIAOLDOLDOLDOLDOLD1"  # not mutated
    assert rotate.changed_fields(target, "cred-20261122000000", aws_key()) == [
        "spec.aws.secretAccessKeyRef.name: aws-keys -> cred-20261122000000",
        "spec.aws.accessKeyId: AKIAOLDOLDOLDOLDOLD1 -> AKIANEWNEWNEWNEWNEW1",
    ]


def test_merge_patch_follows_rfc_7386() -> None:
    assert rotate.merge_patch({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": None, "e": 3},
                              "d": [2]}) == {"a": {"c": 2, "e": 3}, "d": [2]}  # fmt: skip
    assert rotate.merge_patch({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}


# --- completion -------------------------------------------------------------------------------


def completed(*words: str) -> list[str]:
    return completion.complete(_parser(), list(words)).splitlines()


def test_completion_offers_commands_flags_and_values() -> None:
    assert completed("") == ["words", "run", "crds", "list", "usage", "permissions", "rotate",
                             "trust-policy", "console", "completion"]  # fmt: skip
    assert completed("console", "--n") == ["words", "--namespace", "--no-browser"]
    assert completed("u") == ["words", "usage"]
    assert completed("list", "--a") == ["words", "--all-namespaces", "--as", "--as-group"]
    assert completed("list", "-o", "") == ["words", "json", "yaml", "wide", "name"]
    assert completed("list", "--output=y") == ["words", "yaml"]
    assert completed("rotate", "x", "-o", "") == ["words", "yaml", "json"]
    assert completed("trust-policy", "x", "--output", "c") == ["words", "cloudformation"]
    assert completed("completion", "") == ["words", "bash", "zsh", "fish"]
    assert completed("rotate", "x", "--from-file", "") == ["files"]
    assert completed("list", "--kubeconfig=") == ["files"]
    assert completed("usage", "name", "") == ["words"]  # NAME given: nothing more


def test_completion_looks_up_contexts_and_stays_quiet_without_a_cluster(tmp_path: Any) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "one",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": n, "context": {"cluster": "c", "user": "u"}} for n in ("one", "two")],
    }))  # fmt: skip
    assert completed("list", "--kubeconfig", str(kubeconfig), "--context", "") == [
        "words", "one", "two"]  # fmt: skip
    # Port 1 refuses: no candidates, no error.
    assert completed("usage", "--kubeconfig", str(kubeconfig), "") == ["words"]


def test_scripts_name_both_commands() -> None:
    for shell in completion.SHELLS:
        text = completion.script(shell)
        assert "__complete" in text
        assert "kubectl-cloudcred" in text


def test_kubectl_plugin_completion_speaks_cobra(capsys: pytest.CaptureFixture[str]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["kubectl_complete-cloudcred"].partition(":")
    assert getattr(importlib.import_module(module), function) is kubectl_complete
    assert kubectl_complete(["list", "-o", "w"]) == 0
    assert capsys.readouterr().out == "wide\n:4\n"  # 4: no file names
    kubectl_complete(["rotate", "x", "--from-file", ""])
    assert capsys.readouterr().out == ":0\n"  # 0: the shell's file names


# -- cloudcred permissions ---------------------------------------------------------------


def checked_credential(verdict: str, checked: str = "v2-aaa") -> dict[str, Any]:
    reason = {"True": "Sufficient", "False": "MissingPermissions"}.get(verdict, "CheckNotAllowed")
    missing = 70 if verdict == "False" else 0
    sets = [{"name": "platform-aws", "sufficient": verdict, "checked": 50, "reason": reason,
             "message": "the identity may not ask", "missingCount": missing}]  # fmt: skip
    if verdict == "False":
        sets[0]["missing"] = [f"eks:Action{i:02}" for i in range(64)]
    condition = {"type": "PermissionsSufficient", "status": verdict, "reason": sets[0]["reason"],
                 "message": "missing 70 of 50: ..."}  # fmt: skip
    report = {"revision": checked, "checkedTime": "2026-12-05T07:00:00Z", "sets": sets}
    return {"metadata": {"namespace": "acme", "name": "prod"}, "status": {
        "revision": "v2-aaa", "conditions": [condition], "permissions": report}}  # fmt: skip


@pytest.mark.parametrize(
    ("verdict", "checked", "code"),
    [
        ("True", "v2-aaa", 0),
        ("False", "v2-aaa", 4),
        ("Unknown", "v2-aaa", 5),
        ("False", "v2-old", 5),
    ],
)
def test_permissions_exit_code_gates_a_deployment(verdict: str, checked: str, code: int) -> None:
    from cloudcred.cli import permissions

    document = permissions.report(checked_credential(verdict, checked))
    assert permissions.exit_code(document) == code


def test_permissions_text_lists_every_missing_need_status_keeps() -> None:
    from cloudcred.cli import permissions

    shown = permissions.text(permissions.report(checked_credential("False")))
    assert "PermissionsSufficient False (MissingPermissions)" in shown
    assert "platform-aws     False (MissingPermissions)   50        70" in shown
    assert "  eks:Action63\n" in shown
    assert "  ... and 6 more (status lists 64)" in shown
    unknown = permissions.text(permissions.report(checked_credential("Unknown")))
    assert "platform-aws: the identity may not ask" in unknown
    nothing = permissions.report({"metadata": {"namespace": "acme", "name": "prod"}})
    assert permissions.exit_code(nothing) == 0
    assert "nothing to check" in permissions.text(nothing)


def test_permissions_output_refuses_other_formats(capsys: pytest.CaptureFixture[str]) -> None:
    from cloudcred.cli import permissions
    from cloudcred.cli.errors import UsageError

    with pytest.raises(UsageError, match="choose one of json, yaml"):
        permissions.permissions_command(None, "acme", "prod", "wide")  # type: ignore[arg-type]
