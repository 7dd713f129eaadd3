"""A real Kubernetes control plane on loopback: etcd + kube-apiserver.

The binaries are built from Go modules (``tests/envtest/gobuild``) and cached per
version under ``${XDG_CACHE_HOME:-~/.cache}/cloudcred/envtest/<version>/``, so only the
first run builds. ``ControlPlane`` starts both processes on free loopback ports with
RBAC, the admission plugins ValidatingAdmissionPolicy needs, service-account signing
keys and a generated admin kubeconfig, waits for ``/readyz``, and stops them again.

There is no controller-manager: namespaces never finish deleting and owner
references are not garbage-collected. Tests use their own namespaces and delete
what they create.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import fcntl
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

GO_MODULE = Path(__file__).resolve().parent / "gobuild"
BINARIES = ("kube-apiserver", "etcd", "kubectl")
_GO_PACKAGES = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "etcd": "./cmd/etcd",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started."""


def pinned_versions() -> tuple[str, str]:
    """Kubernetes and etcd versions, read from the Go module that builds them."""
    go_mod = (GO_MODULE / "go.mod").read_text()
    kubernetes = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", go_mod, re.MULTILINE)
    etcd = re.search(r"^\s*go\.etcd\.io/etcd/server/v3 (v\S+)", go_mod, re.MULTILINE)
    if not kubernetes or not etcd:
        raise ControlPlaneError(f"{GO_MODULE}/go.mod does not pin kubernetes and etcd")
    return kubernetes.group(1), etcd.group(1)


def cache_dir() -> Path:
    kubernetes, etcd = pinned_versions()
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "cloudcred" / "envtest" / f"kubernetes-{kubernetes}_etcd-{etcd}"


def _version_ldflags(kubernetes: str) -> str:
    """Stamp the real version into the binaries, as Kubernetes' own build does
    (Helm's kubeVersion checks read gitVersion)."""
    major, minor = kubernetes.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": kubernetes,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        flags += [f"-X={package}.{key}={value}" for key, value in values.items()]
    return " ".join(flags)


def ensure_binaries() -> dict[str, Path]:
    """Paths of kube-apiserver, etcd and kubectl, building them on first use."""
    target = cache_dir()
    paths = {name: target / name for name in BINARIES}
    if all(path.exists() for path in paths.values()):
        return paths
    if not shutil.which("go"):
        raise ControlPlaneError("Go is needed to build the local control plane: install Go")
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, even across processes
        if all(path.exists() for path in paths.values()):
            return paths
        kubernetes, _ = pinned_versions()
        with tempfile.TemporaryDirectory(dir=target) as staging:
            command = [
                "go", "build", "-o", staging + "/",
                f"-ldflags={_version_ldflags(kubernetes)}",
                *_GO_PACKAGES.values(),
            ]  # fmt: skip
            result = subprocess.run(
                command, cwd=GO_MODULE, capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise ControlPlaneError(f"go build failed:\n{result.stderr[-4000:]}")
            for name in BINARIES:
                os.replace(Path(staging) / name, paths[name])
    return paths


# Ports for the servers tests start, below the kernel's ephemeral range (32768 and up),
# where the suite's many client connections take their source ports, and a block of its
# own per pytest-xdist worker: a port handed out is not taken by anyone else before the
# server binds it. Within a block, handed out in turn from a random start.
_PORT_BLOCK = 4000
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % 5
_next_port = 12000 + _WORKER * _PORT_BLOCK + random.randrange(_PORT_BLOCK)


def free_port() -> int:
    """A loopback port nothing listens on, for a server a test is about to start."""
    global _next_port
    block = 12000 + _WORKER * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        port = _next_port
        _next_port = block + (_next_port + 1 - block) % _PORT_BLOCK
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {block}-{block + _PORT_BLOCK - 1}")


def _kill_with_parent() -> None:
    """In the child: get SIGKILL when the process that started us dies, so a crashed
    test run leaves no etcd or kube-apiserver behind."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class _Pki:
    """A CA, a serving certificate for 127.0.0.1 and an admin client certificate."""

    folder: Path

    def write(self) -> None:
        ca_key = self._key("ca.key")
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudcred-envtest-ca")])
        ca_cert = self._sign(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True)
        self._write_cert("ca.crt", ca_cert)
        server_key = self._key("server.key")
        server = self._sign(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
            server_key.public_key(), ca_name, ca_key,
            sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
        )  # fmt: skip
        self._write_cert("server.crt", server)
        admin_key = self._key("admin.key")
        admin = self._sign(
            x509.Name([
                x509.NameAttribute(NameOID.COMMON_NAME, "cloudcred-admin"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            ]),
            admin_key.public_key(), ca_name, ca_key,
        )  # fmt: skip
        self._write_cert("admin.crt", admin)
        sa_key = self._key("sa.key")
        (self.folder / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def client(self, user: str, groups: tuple[str, ...]) -> None:
        """A client certificate ``<user>.crt``/``<user>.key`` signed by the CA (CN is
        the user name, O the groups), for tests that tell clients apart in the audit log."""
        ca_key = serialization.load_pem_private_key((self.folder / "ca.key").read_bytes(), None)
        assert isinstance(ca_key, rsa.RSAPrivateKey)
        ca_cert = x509.load_pem_x509_certificate((self.folder / "ca.crt").read_bytes())
        key = self._key(f"{user}.key")
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, user),
            *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups),
        ])  # fmt: skip
        cert = self._sign(subject, key.public_key(), ca_cert.subject, ca_key)
        self._write_cert(f"{user}.crt", cert)

    def _key(self, filename: str) -> rsa.RSAPrivateKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.folder / filename).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        return key

    def _write_cert(self, filename: str, cert: x509.Certificate) -> None:
        (self.folder / filename).write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _sign(
        subject: x509.Name,
        public_key: rsa.RSAPublicKey,
        issuer: x509.Name,
        issuer_key: rsa.RSAPrivateKey,
        ca: bool = False,
        sans: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class ControlPlane:
    """etcd + kube-apiserver in ``workdir``; ``kubeconfig`` is the admin's.

    ``die_with_parent`` ties both processes to this Python process (tests); ``make
    cluster-up`` turns it off so the control plane outlives the command.
    """

    workdir: Path
    die_with_parent: bool = True
    watch_cache: bool = True
    audit_policy: Path | None = None
    startup_timeout: float = 90.0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    port: int = 0
    etcd_port: int = 0
    etcd_peer_port: int = 0

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def start(self) -> ControlPlane:
        binaries = ensure_binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = self.pki
        pki.mkdir(exist_ok=True)
        _Pki(pki).write()
        self.etcd_port, self.etcd_peer_port, self.port = free_port(), free_port(), free_port()
        try:
            self._start_etcd(binaries["etcd"], self.etcd_peer_port)
            self._start_apiserver(binaries["kube-apiserver"], pki)
            self._write_kubeconfig(pki)
            self._wait_ready(pki)
        except BaseException:
            self.stop()
            raise
        return self

    # -- faults: tests stop and start the parts of a running control plane ----------

    def stop_process(self, name: str, grace: float = 10.0) -> None:
        """Stop one process (``kube-apiserver``, ``etcd`` or an extra API server):
        SIGTERM, SIGKILL after ``grace`` seconds. (kube-apiserver takes them all: it goes
        on serving the connections it has while it drains them. A short grace is an
        outage that starts at once.)"""
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def resume(self) -> None:
        """Start etcd and kube-apiserver again, whichever is stopped, on the same ports,
        with the same certificates and etcd data: the kubeconfig stays valid and the
        data survives. Waits for ``/readyz``."""
        if not self.port:
            raise ControlPlaneError("resume() needs a control plane that was started")
        binaries = ensure_binaries()
        if not self._running("etcd"):
            self._start_etcd(binaries["etcd"], self.etcd_peer_port)
        if not self._running("kube-apiserver"):
            self._start_apiserver(binaries["kube-apiserver"], self.pki)
        self._wait_ready(self.pki)

    def restart(self, downtime: float = 0.0, etcd: bool = True) -> None:
        """Stop kube-apiserver (and etcd, unless ``etcd=False``), wait ``downtime``
        seconds, and start them again on the same ports (see ``resume``)."""
        self.stop_process("kube-apiserver")
        if etcd:
            self.stop_process("etcd")
        time.sleep(downtime)
        self.resume()

    def add_apiserver(self, name: str) -> Path:
        """Start another kube-apiserver on a free port against the same etcd (as in
        a highly available control plane); return its admin kubeconfig. Stop it with
        ``stop_process(name)``."""
        port = free_port()
        self._start_apiserver(ensure_binaries()["kube-apiserver"], self.pki, port=port,
                              name=name)  # fmt: skip
        kubeconfig = self.workdir / f"kubeconfig-{name}"
        self._write_kubeconfig(self.pki, path=kubeconfig, url=f"https://127.0.0.1:{port}")
        self._wait_ready(self.pki, url=f"https://127.0.0.1:{port}")
        return kubeconfig

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ("system:masters",)) -> Path:
        """A kubeconfig with a client certificate of its own (user ``user``, in
        ``groups``): the audit log tells its requests apart from the admin's."""
        _Pki(self.pki).client(user, groups)
        path = self.workdir / f"kubeconfig-{user}"
        self._write_kubeconfig(self.pki, path=path, cert=f"{user}.crt", key=f"{user}.key")
        return path

    def etcd_revision(self) -> int:
        """etcd's current revision (the header of a range request on its JSON gateway)."""
        answer = self._etcd("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})
        return int(answer["header"]["revision"])

    def compact_etcd(self, revision: int | None = None) -> int:
        """Compact etcd's history up to ``revision`` (default: the current one), as the
        API server does every 5 minutes; watches from older resourceVersions then get
        410 Gone. Returns the revision compacted to."""
        revision = revision or self.etcd_revision()
        self._etcd("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def _etcd(self, path: str, body: dict[str, object]) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - a loopback URL we built
            self.etcd_url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return dict(json.loads(answer.read()))

    def _running(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.processes[name] = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not them
            preexec_fn=_kill_with_parent if self.die_with_parent else None,
        )
        log.close()

    def _start_etcd(self, etcd: Path, peer_port: int) -> None:
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn("etcd", [
            str(etcd),
            "--name=envtest",
            f"--data-dir={self.workdir / 'etcd-data'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=envtest={peer_url}",
            "--unsafe-no-fsync=true",  # tests need speed, not durability
            "--log-level=warn",
        ])  # fmt: skip

    def _start_apiserver(
        self, apiserver: Path, pki: Path, port: int | None = None, name: str = "kube-apiserver"
    ) -> None:
        command = [
            str(apiserver),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port or self.port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'server.crt'}",
            f"--tls-private-key-file={pki / 'server.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--enable-admission-plugins=NamespaceLifecycle,ValidatingAdmissionPolicy",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--allow-privileged=true",
            f"--watch-cache={'true' if self.watch_cache else 'false'}",
            "--profiling=false",
        ]
        if self.audit_policy:
            command += [
                f"--audit-policy-file={self.audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
            ]
        self._spawn(name, command)

    def _write_kubeconfig(
        self,
        pki: Path,
        path: Path | None = None,
        url: str | None = None,
        cert: str = "admin.crt",
        key: str = "admin.key",
    ) -> None:
        def data(name: str) -> str:
            return base64.b64encode((pki / name).read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "envtest",
                "cluster": {"server": url or self.url,
                            "certificate-authority-data": data("ca.crt")},
            }],
            "users": [{
                "name": "admin",
                "user": {
                    "client-certificate-data": data(cert),
                    "client-key-data": data(key),
                },
            }],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "admin"}}],
            "current-context": "envtest",
        }  # fmt: skip
        path = path or self.kubeconfig
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def _wait_ready(self, pki: Path, url: str | None = None) -> None:
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with {process.returncode}:\n{self.log_tail(name)}"
                    )
            try:
                readyz = f"{url or self.url}/readyz"  # an https URL we built ourselves
                with urllib.request.urlopen(readyz, context=context, timeout=5):  # noqa: S310
                    return
            except (urllib.error.URLError, OSError) as error:
                last_error = str(error)
            time.sleep(0.3)
        raise ControlPlaneError(
            f"kube-apiserver not ready after {self.startup_timeout}s ({last_error}):\n"
            f"{self.log_tail('kube-apiserver')}"
        )

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """Stop the API server(s), then etcd; SIGKILL whatever does not stop in ``grace``
        seconds."""
        for name in [n for n in self.processes if n != "etcd"] + ["etcd"]:
            self.stop_process(name, grace)

    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}


def stop_pids(pids: dict[str, int]) -> None:
    """Stop processes recorded by ``make cluster-up`` (they are not our children)."""
    for name in ("kube-apiserver", "etcd"):
        pid = pids.get(name)
        if pid is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)  # raises ProcessLookupError once it is gone
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
