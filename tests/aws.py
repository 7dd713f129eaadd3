"""moto's server on loopback, with signature checking on, reached through boto3's
own endpoint setting (AWS_ENDPOINT_URL): the operator has no test-only code path."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3

from tests.envtest.controlplane import free_port

REGION = "us-east-1"
ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


@dataclass
class AwsKey:
    user: str
    access_key_id: str
    secret_access_key: str


@dataclass
class Moto:
    endpoint: str
    process: subprocess.Popen[bytes]
    admin: AwsKey

    def client(self, service: str, key: AwsKey | None = None) -> Any:
        key = key or self.admin
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=key.access_key_id,
            aws_secret_access_key=key.secret_access_key,
        )

    def create_user(self, name: str, policy: str | None = ALLOW_ALL) -> AwsKey:
        iam = self.client("iam")
        iam.create_user(UserName=name)
        if policy:
            iam.put_user_policy(UserName=name, PolicyName="access", PolicyDocument=policy)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return AwsKey(name, key["AccessKeyId"], key["SecretAccessKey"])

    def create_role(self, name: str) -> str:
        trust = json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"},
                           "Action": "sts:AssumeRole"}],
        })  # fmt: skip
        iam = self.client("iam")
        role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)
        iam.put_role_policy(RoleName=name, PolicyName="access", PolicyDocument=ALLOW_ALL)
        return str(role["Role"]["Arn"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_moto(log_path: Path, recording: Path | None = None) -> Moto:
    """With ``recording``, moto writes every request it receives to that file, one JSON
    object a line (moto's own recorder): tests read what the operator sent."""
    port = free_port()
    # Three actions without authentication create the admin user, its policy and its
    # key; from then on moto checks every signature and IAM policy.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3", "MOTO_PORT": str(port),
           # Where moto's request recorder writes, when a test turns it on.
           "MOTO_RECORDER_FILEPATH": str(log_path.with_name("recording.jsonl"))}  # fmt: skip
    if recording is not None:
        env.update(MOTO_ENABLE_RECORDING="true", MOTO_RECORDER_FILEPATH=str(recording))
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"moto did not start: {log_path.read_text()[-2000:]}") from None
            time.sleep(0.2)
    endpoint = f"http://127.0.0.1:{port}"
    bootstrap = boto3.client("iam", endpoint_url=endpoint, region_name=REGION,
                             aws_access_key_id="AKIABOOTSTRAP0000000",
                             aws_secret_access_key="bootstrap")  # fmt: skip
    bootstrap.create_user(UserName="admin")
    bootstrap.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=ALLOW_ALL)
    key = bootstrap.create_access_key(UserName="admin")["AccessKey"]
    return Moto(endpoint, process, AwsKey("admin", key["AccessKeyId"], key["SecretAccessKey"]))


def recorded_calls(recording: Path, action: str) -> list[dict[str, list[str]]]:
    """The form parameters of every recorded request for a query-API ``action``
    (STS, IAM), oldest first."""
    calls: list[dict[str, list[str]]] = []
    if not recording.exists():
        return calls
    for line in recording.read_text().splitlines():
        entry = json.loads(line)
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode("utf-8", "replace")
        form = parse_qs(body)
        if form.get("Action") == [action]:
            calls.append(form)
    return calls


def blackhole() -> tuple[socket.socket, str]:
    """A listening socket that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    return server, f"http://127.0.0.1:{server.getsockname()[1]}"
