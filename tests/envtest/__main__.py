"""Command line of the local control plane, used by the Makefile.

python -m tests.envtest build          build and cache the binaries
python -m tests.envtest path NAME      print the cached path of kube-apiserver|etcd|kubectl
python -m tests.envtest up [DIR]       start in the background, install the CRDs,
                                       write DIR/kubeconfig (DIR defaults to .local)
python -m tests.envtest down [DIR]     stop what `up` started
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tests.envtest.controlplane import (
    ControlPlane,
    ControlPlaneError,
    cache_dir,
    ensure_binaries,
    stop_pids,
)
from tests.kube import api_client, install_crds


def _up(local: Path) -> None:
    state = local / "controlplane.json"
    if state.exists():
        print(f"already running (see {state}); run `make cluster-down` first", file=sys.stderr)
        sys.exit(1)
    plane = ControlPlane(workdir=local / "controlplane", die_with_parent=False)
    plane.start()
    state.write_text(json.dumps({"pids": plane.pids(), "url": plane.url}))
    kubeconfig = local / "kubeconfig"
    shutil.copy(plane.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o600)
    installed = install_crds(api_client(kubeconfig))
    print(f"control plane at {plane.url}; CRDs installed: {', '.join(installed)}")
    print(f"export KUBECONFIG={kubeconfig.resolve()}")


def _down(local: Path) -> None:
    state = local / "controlplane.json"
    if not state.exists():
        print("no control plane started by `make cluster-up`")
        return
    stop_pids(json.loads(state.read_text())["pids"])
    state.unlink()
    shutil.rmtree(local / "controlplane", ignore_errors=True)
    (local / "kubeconfig").unlink(missing_ok=True)
    print("control plane stopped")


def main(argv: list[str]) -> None:
    command = argv[0] if argv else "build"
    try:
        if command == "build":
            paths = ensure_binaries()
            print(f"binaries in {cache_dir()}: {', '.join(sorted(paths))}")
        elif command == "path":
            print(ensure_binaries()[argv[1]])
        elif command == "up":
            _up(Path(argv[1] if len(argv) > 1 else ".local"))
        elif command == "down":
            _down(Path(argv[1] if len(argv) > 1 else ".local"))
        else:
            print(__doc__, file=sys.stderr)
            sys.exit(2)
    except ControlPlaneError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
