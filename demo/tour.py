"""The guided tour behind ``make demo``.

It starts, in a temporary folder of its own (never ``.local``, so a ``make cluster-up``
control plane is left alone):

- the local control plane of the test harness (etcd + kube-apiserver on loopback), with
  the CRDs and the admission policies installed;
- moto's server on loopback as a stand-in AWS, with a user ``deployer`` (whose key goes
  into a static-key credential), a role ``cloudcred-deployer`` and the operator's own
  identity;
- the operator (``python -m cloudcred run --standalone -n acme``) as a subprocess;

then creates the ``acme`` samples (two AWS credentials, three clusters) and shows, step
by step, what a user sees: ``kubectl get cloud -A``, a refused delete, a key rotation
with ``cloudcred rotate`` and ``cloudcred usage``. Everything stops and the folder is
removed at the end, also on Ctrl-C or an error. ``DEMO_PAUSE`` (seconds, default 0)
pauses between the steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from rich.console import Console
from tests.aws import REGION, Moto, start_moto
from tests.envtest.controlplane import ControlPlane, ensure_binaries, free_port
from tests.kube import ROOT, api_client, load_yaml_documents
from tests.operator import OperatorProcess

from cloudcred.constants import CLUSTER_PLURAL, CREDENTIAL_PLURAL, GROUP, VERSION
from demo.prepare import prepare

DISCLAIMER = "AWS here is moto, a local stand-in: no real cloud is contacted"
NAMESPACE = "acme"
ROLE_CREDENTIAL = "aws-prod-us-east-1"  # names from deploy/samples/
KEY_CREDENTIAL = "aws-staging-eu-west-3"
IAM_USER = "deployer"
IAM_ROLE = "cloudcred-deployer"
CLUSTERS = {  # name: (region, credential)
    "prod-us": ("us-east-1", ROLE_CREDENTIAL),
    "staging-eu": ("eu-west-3", KEY_CREDENTIAL),
    "staging-us": ("us-west-2", KEY_CREDENTIAL),
}
SAMPLES = ROOT / "deploy" / "samples"
WAIT_TIMEOUT = 60.0

T = TypeVar("T")


class DemoError(RuntimeError):
    """A step of the tour failed; the message says which."""


_signalled: list[int] = []  # the signals that stop the tour (Ctrl-C reaches the children too)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    _signalled.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)  # so that the cleanup in main() runs


class Tour:
    def __init__(self, console: Console, workdir: Path, pause: float) -> None:
        self.console = console
        self.workdir = workdir
        self.pause = pause
        self.step_number = 0
        self.kubectl = str(ensure_binaries()["kubectl"])
        self.plane: ControlPlane | None = None
        self.moto: Future[Moto] | None = None
        self.operator: OperatorProcess | None = None
        self.api: client.ApiClient | None = None
        self.pids: list[int] = []

    # -- presentation ---------------------------------------------------------------

    def step(self, title: str) -> None:
        if self.step_number and self.pause > 0:
            time.sleep(self.pause)
        self.step_number += 1
        self.console.print()
        self.console.rule(f"[bold]{self.step_number}. {title}", align="left")

    def say(self, text: str) -> None:
        self.console.print(text, markup=False)

    def done(self, text: str, started: float) -> None:
        self.console.print(f"[green]✓[/] {text} ({time.monotonic() - started:.1f} s)")

    def run(
        self, command: list[str], shown: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``command`` with the demo's KUBECONFIG, its output going straight to
        ours; ``shown`` is what a user would type."""
        assert self.plane is not None
        self.console.print(f"$ {shown}", style="bold cyan", markup=False, highlight=False)
        sys.stdout.flush()
        env = {**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)}
        return subprocess.run(
            command, env=env, cwd=ROOT, text=True, check=False, input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )  # fmt: skip

    def wait(
        self, what: str, predicate: Callable[[], T | None], timeout: float = WAIT_TIMEOUT
    ) -> T:
        """Polls the API until ``predicate()`` is truthy; fails early if the operator died."""
        started = time.monotonic()
        with self.console.status(f"waiting for {what}"):
            while True:
                result = predicate()
                if result:
                    self.done(what, started)
                    return result
                if self.operator and not self.operator.alive:
                    if _signalled:  # it got the terminal's Ctrl-C first
                        raise KeyboardInterrupt
                    raise DemoError(f"the operator stopped:\n{self._operator_log_tail()}")
                if time.monotonic() - started > timeout:
                    raise DemoError(f"timed out after {timeout:g} s waiting for {what}")
                time.sleep(0.25)

    def _operator_log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.operator.log().splitlines()[-lines:]) if self.operator else ""

    # -- API helpers --------------------------------------------------------------------

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def objects(self, plural: str) -> dict[str, dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural)
        return {item["metadata"]["name"]: item for item in listed["items"]}

    @staticmethod
    def condition(obj: dict[str, Any], type_: str) -> str | None:
        for item in (obj.get("status") or {}).get("conditions") or []:
            if item.get("type") == type_:
                return str(item.get("status"))
        return None

    # -- the tour ---------------------------------------------------------------------

    def start(self) -> None:
        self.step("Start a Kubernetes control plane, a stand-in AWS and the operator")
        self.console.print(f"[bold yellow]{DISCLAIMER}.[/]")
        self.say(f"Everything runs on loopback, in {self.workdir}.")
        started = time.monotonic()
        # moto starts in a thread meanwhile; the control plane must start in this
        # thread: its processes are tied to the thread that started them.
        with ThreadPoolExecutor(max_workers=1) as pool:
            self.moto = pool.submit(start_moto, self.workdir / "moto.log")
            self.plane = ControlPlane(workdir=self.workdir / "controlplane")
            self.plane.start()
            self.pids += self.plane.pids().values()
            self.api = api_client(self.plane.kubeconfig)
            crds = prepare(self.api)
            self.done(f"kube-apiserver at {self.plane.url}; CRDs installed: {', '.join(crds)}; "
                      "admission policies installed", started)  # fmt: skip
            moto = self.moto.result()
        assert moto.process.pid is not None
        self.pids.append(moto.process.pid)
        self.done(f"moto (stand-in AWS) at {moto.endpoint}", started)

        identity = moto.create_user("cloudcred-operator")
        closed = f"127.0.0.1:{free_port()}"  # the other providers: nothing listens there
        self.operator = OperatorProcess(
            kubeconfig=self.plane.kubeconfig,
            log_path=self.workdir / "operator.log",
            args=["--namespace", NAMESPACE],
            env={
                "AWS_ENDPOINT_URL": moto.endpoint,
                "AWS_ACCESS_KEY_ID": identity.access_key_id,
                "AWS_SECRET_ACCESS_KEY": identity.secret_access_key,
                "AWS_DEFAULT_REGION": REGION,
                "CLOUDCRED_LOG_LEVEL": "INFO",
                "CLOUDCRED_LOG_FORMAT": "plain",
                "CLOUDCRED_METRICS_PORT": "0",
                # The demo's rotation deletes the old key 5 s after deactivating it (a
                # day in a real installation).
                "CLOUDCRED_ROTATION_DELETE_AFTER": "5",
                "CLOUDCRED_GCP_TOKEN_URI": f"http://{closed}/token",
                "CLOUDCRED_AZURE_AUTHORITY_HOST": f"https://{closed}",
                "CLOUDCRED_SCALEWAY_API_URL": f"http://{closed}",
                "CLOUDCRED_SCALEWAY_S3_URL": f"http://{closed}",
            },
        ).start()
        assert self.operator.process is not None
        self.pids.append(self.operator.process.pid)
        self.done(f"operator started: cloudcred run --standalone -n {NAMESPACE} "
                  f"(log: {self.operator.log_path.name})", started)  # fmt: skip

    def create_samples(self) -> None:
        self.step(f"Create the samples in namespace {NAMESPACE}")
        moto = self.moto.result() if self.moto else None
        assert moto is not None
        key = moto.create_user(IAM_USER)
        role_arn = moto.create_role(IAM_ROLE)
        self.say(f"In moto: IAM user {IAM_USER} with access key {key.access_key_id}, "
                 f"role {role_arn}.")  # fmt: skip
        documents: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        ]
        for doc in load_yaml_documents(SAMPLES / "cloudcredential-aws-keys.yaml"):
            if doc["kind"] == "Secret":
                doc["stringData"]["secretAccessKey"] = key.secret_access_key
            else:
                doc["spec"]["aws"]["accessKeyId"] = key.access_key_id
            documents.append(doc)
        for doc in load_yaml_documents(SAMPLES / "cloudcredential-aws-role.yaml"):
            doc["spec"]["aws"]["roleArn"] = role_arn
            documents.append(doc)
        for name, (region, credential) in CLUSTERS.items():
            documents.append({
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "Cluster",
                "metadata": {"name": name},
                "spec": {"provider": "AWS", "region": region,
                         "credentialRef": {"name": credential}},
            })  # fmt: skip
        for doc in documents[1:]:
            doc["metadata"]["namespace"] = NAMESPACE
        manifest = self.workdir / f"{NAMESPACE}.yaml"  # holds a (moto) secret key: 0600
        manifest.touch(mode=0o600)
        manifest.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        self.say("Two AWS credentials from deploy/samples/ (a static key whose secret half "
                 "is in a Secret, and a role) and three clusters that use them:")  # fmt: skip
        applied = self.run(
            [self.kubectl, "apply", "--server-side", "-f", str(manifest)],
            f"kubectl apply --server-side -f {NAMESPACE}.yaml",
        )
        if applied.returncode != 0:
            raise DemoError("kubectl apply failed")

        def all_ready() -> bool:
            credentials = self.objects(CREDENTIAL_PLURAL)
            clusters = self.objects(CLUSTER_PLURAL)
            expected = {name: 0 for name in credentials}
            for _, credential in CLUSTERS.values():
                expected[credential] = expected.get(credential, 0) + 1
            return (
                len(credentials) == 2
                and all(
                    self.condition(obj, "Verified") == "True"
                    and (obj.get("status") or {}).get("clusterCount") == expected[name]
                    for name, obj in credentials.items()
                )
                and len(clusters) == len(CLUSTERS)
                and all(self.condition(obj, "Ready") == "True" for obj in clusters.values())
            )

        self.wait("the operator to verify both credentials with moto, bind and deploy "
                  "the clusters", all_ready)  # fmt: skip

    def show(self) -> None:
        self.step("Every credential, whether it verified, and the clusters that use it")
        self.run([self.kubectl, "get", "cloud", "-A"], "kubectl get cloud -A")
        self.say("")
        self.run(
            [self.kubectl, "get", "ccred", ROLE_CREDENTIAL, "-n", NAMESPACE, "-o",
             "jsonpath={range .status.clusters[*]}{.namespace}/{.name}{\"\\n\"}{end}"],
            f"kubectl get ccred {ROLE_CREDENTIAL} -n {NAMESPACE} "
            "-o jsonpath='{range .status.clusters[*]}{.namespace}/{.name}{\"\\n\"}{end}'",
        )  # fmt: skip

    def refuse_delete(self) -> None:
        self.step("A credential that clusters use cannot be deleted")

        def policy_refuses() -> bool:
            # Admission policies load asynchronously: probe with a server-side dry run.
            try:
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, CREDENTIAL_PLURAL, ROLE_CREDENTIAL, dry_run="All"
                )
            except ApiException as error:
                return error.status in (403, 422)
            return False

        self.wait("the admission policy to take effect", policy_refuses)
        refused = self.run(
            [self.kubectl, "delete", "ccred", ROLE_CREDENTIAL, "-n", NAMESPACE],
            f"kubectl delete ccred {ROLE_CREDENTIAL} -n {NAMESPACE}",
        )
        if refused.returncode == 0:
            raise DemoError(f"{ROLE_CREDENTIAL} was deleted although prod-us uses it")
        self.say("Refused by the ValidatingAdmissionPolicy; the operator's finalizer is the "
                 "safety net. Re-point or delete the clusters first.")  # fmt: skip

    def rotate(self) -> None:
        self.step(f"Rotate the static key of {KEY_CREDENTIAL}")
        moto = self.moto.result() if self.moto else None
        assert moto is not None
        created = moto.client("iam").create_access_key(UserName=IAM_USER)["AccessKey"]
        new_key = json.dumps({"AccessKey": created}, default=str, indent=2)
        self.say(f"A second key for {IAM_USER}, created in moto (what "
                 f"`aws iam create-access-key --user-name {IAM_USER}` prints), "
                 "goes in on stdin:")  # fmt: skip
        rotated = self.run(
            [sys.executable, "-m", "cloudcred", "rotate", KEY_CREDENTIAL, "-n", NAMESPACE,
             "--timeout", "60s"],
            f"aws iam create-access-key --user-name {IAM_USER} | "
            f"cloudcred rotate {KEY_CREDENTIAL} -n {NAMESPACE}",
            stdin=new_key,
        )  # fmt: skip
        if rotated.returncode != 0:
            raise DemoError(f"cloudcred rotate exited with {rotated.returncode}")

    def rotate_automatically(self) -> None:
        self.step(f"Let the operator rotate {KEY_CREDENTIAL} itself")
        moto = self.moto.result() if self.moto else None
        assert moto is not None
        iam = moto.client("iam")
        in_use = (self.objects("cloudcredentials")[KEY_CREDENTIAL].get("status") or {}).get(
            "publicId")  # fmt: skip
        for key in iam.list_access_keys(UserName=IAM_USER)["AccessKeyMetadata"]:
            if key["AccessKeyId"] != in_use:  # step 4 of the rotation above
                iam.delete_access_key(UserName=IAM_USER, AccessKeyId=key["AccessKeyId"])
        self.say("The old key is deleted (step 4 above). Now spec.rotation.policy: "
                 "Automatic (rotate at 90 days; keep the old key active 5 s after the "
                 "rollout, then inactive 5 s more before it is deleted; for the "
                 "demo):")  # fmt: skip
        patch = {"spec": {"rotation": {"policy": "Automatic", "maxAge": "90d",
                                       "gracePeriod": "5s"}}}  # fmt: skip
        self.run([self.kubectl, "patch", "ccred", KEY_CREDENTIAL, "-n", NAMESPACE, "--type",
                  "merge", "-p", json.dumps(patch)],
                 f"kubectl patch ccred {KEY_CREDENTIAL} -n {NAMESPACE} --type merge "
                 f"-p '{json.dumps(patch)}'")  # fmt: skip
        self.say("`--now` asks the operator to rotate at once (instead of at 90 days) and "
                 "follows it: the operator makes the key with the key's own identity, rolls it "
                 "out, and retires the old one after the rollout:")  # fmt: skip
        rotated = self.run(
            [sys.executable, "-m", "cloudcred", "rotate", KEY_CREDENTIAL, "-n", NAMESPACE,
             "--now", "--timeout", "90s"],
            f"cloudcred rotate {KEY_CREDENTIAL} -n {NAMESPACE} --now",
        )  # fmt: skip
        if rotated.returncode != 0:
            raise DemoError(f"cloudcred rotate --now exited with {rotated.returncode}")

        def one_key() -> list[dict[str, Any]] | None:
            listed: list[dict[str, Any]] = iam.list_access_keys(UserName=IAM_USER)[
                "AccessKeyMetadata"]  # fmt: skip
            status = self.objects("cloudcredentials")[KEY_CREDENTIAL].get("status") or {}
            done = (status.get("rotation") or {}).get("phase") == "Idle"
            return listed if len(listed) == 1 and done else None

        keys = self.wait("the old key deleted after the grace period", one_key)
        self.say(f"{IAM_USER} now has one key, {keys[0]['AccessKeyId']} ({keys[0]['Status']}); "
                 "the spec still names the first one: the new key is in a Secret the operator "
                 "owns, named in status.rotation.")  # fmt: skip
        self.run([self.kubectl, "get", "ccred", KEY_CREDENTIAL, "-n", NAMESPACE, "-o",
                  "jsonpath={.status.rotation}{\"\\n\"}"],
                 f"kubectl get ccred {KEY_CREDENTIAL} -n {NAMESPACE} -o "
                 "jsonpath='{.status.rotation}'")  # fmt: skip

    def usage(self) -> None:
        self.step("Which clusters use the credential, and with which revision")
        shown = self.run(
            [sys.executable, "-m", "cloudcred", "usage", KEY_CREDENTIAL, "-n", NAMESPACE],
            f"cloudcred usage {KEY_CREDENTIAL} -n {NAMESPACE}",
        )
        if shown.returncode != 0:
            raise DemoError(f"cloudcred usage exited with {shown.returncode}")
        self.say("")
        self.run([self.kubectl, "get", "cloud", "-n", NAMESPACE],
                 f"kubectl get cloud -n {NAMESPACE}")  # fmt: skip

    def stop(self) -> None:
        """Stops whatever was started, in reverse order; never raises."""
        if self.operator:
            with contextlib.suppress(Exception):
                self.operator.stop()
        if self.moto:
            with contextlib.suppress(Exception):
                self.moto.result(timeout=60).stop()
        if self.api:
            with contextlib.suppress(Exception):
                self.api.close()
        if self.plane:
            with contextlib.suppress(Exception):
                self.plane.stop()


def main() -> int:
    console = Console(soft_wrap=True, highlight=False)
    pause = float(os.environ.get("DEMO_PAUSE") or 0)
    # Only moto answers for AWS: no profile, config file or endpoint from the
    # environment can send a request elsewhere.
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        del os.environ[name]
    workdir = Path(tempfile.mkdtemp(prefix="cloudcred-demo-"))
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(
        workdir / "no-aws-config"
    )
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    started = time.monotonic()
    tour: Tour | None = None
    status = 0
    try:
        console.rule("[bold]cloudcred: a guided tour")
        tour = Tour(console, workdir, pause)
        tour.start()
        tour.create_samples()
        tour.show()
        tour.refuse_delete()
        tour.rotate()
        tour.rotate_automatically()
        tour.usage()
    except KeyboardInterrupt:
        console.print("\n[yellow]Interrupted.[/]")
        status = 130
    except SystemExit as stop:  # SIGTERM or SIGHUP
        console.print("\n[yellow]Stopped.[/]")
        status = stop.code if isinstance(stop.code, int) else 1
    except DemoError as error:
        console.print(f"[bold red]The demo failed:[/] {error}")
        status = 1
    except Exception as error:
        console.print(f"[bold red]The demo failed:[/] {type(error).__name__}: {error}")
        status = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        if status == 1 and tour and tour.operator:
            tail = tour._operator_log_tail()
            if tail:
                console.print("[bold]Last lines of the operator's log:[/]")
                console.print(tail, markup=False)
        console.print()
        console.rule("[bold]Clean up", align="left")
        if tour:
            tour.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        pids = ", ".join(str(pid) for pid in tour.pids) if tour else ""
        console.print(f"Stopped the operator, moto and the control plane (pids {pids}); "
                      f"removed {workdir}.")  # fmt: skip
        if status == 0:
            console.print(f"[bold green]Tour complete[/] in {time.monotonic() - started:.0f} s. "
                          "Next: `make run` and the README.")  # fmt: skip
    return status
