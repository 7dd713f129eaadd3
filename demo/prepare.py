"""Make a cluster ready for the operator: install the CRDs and the admission policies,
and wait until the API server serves both kinds.

``python -m demo.prepare KUBECONFIG`` (used by ``make run`` on the local control plane).
Right after a CRD is Established, the API server can still answer 429 "storage is
(re)initializing" for a moment; waiting here keeps that error out of the operator's log.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.config import ConfigException
from tests.kube import api_client, install_admission_policies, install_crds
from urllib3.exceptions import HTTPError

from cloudcred.constants import CLUSTER_PLURAL, CREDENTIAL_PLURAL, GROUP, VERSION


def prepare(api: client.ApiClient, timeout: float = 30.0) -> list[str]:
    """Installs (or updates) the CRDs and the admission policies; returns the CRD names
    once both kinds can be listed."""
    names = install_crds(api)
    install_admission_policies(api)
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    for plural in (CREDENTIAL_PLURAL, CLUSTER_PLURAL):
        while True:
            try:
                custom.list_cluster_custom_object(GROUP, VERSION, plural, limit=1)
                break
            except ApiException as error:
                if error.status not in (404, 429, 503) or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
    return names


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m demo.prepare KUBECONFIG", file=sys.stderr)
        return 2
    try:
        with api_client(Path(argv[0])) as api:
            names = prepare(api)
    except (ApiException, ConfigException, HTTPError, OSError, TimeoutError) as error:
        print(f"cannot prepare the cluster of {argv[0]}: {error}", file=sys.stderr)
        return 1
    print(f"CRDs installed: {', '.join(names)}; admission policies installed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
