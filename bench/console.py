"""How long the console takes to render its pages server-side, from its watch-fed cache.

Usage: python -m bench.console [CREDENTIALS] [CLUSTERS] [REPEATS]   (default 1000 10000 5)

The cache is filled as its informers fill it (``slim`` of each object) with CREDENTIALS
CloudCredentials (AWS static keys and roles, GCP, Azure, Scaleway in turn, with the
conditions, rollout, rotation and key facts the operator writes) and CLUSTERS Clusters
spread over them, the first credential holding half of them (past the 2000 that
its status lists, the page takes them from the cache's index). The real application
then answers over loopback (aiohttp's test server, the login done once): the whole list,
a filtered and sorted list, the JSON, the first credential's page (its Events read from
an API server that is not there: refused at once) and its associated clusters. Each is
asked REPEATS times; the median and the slowest are printed, in the bench's form:

    bench: console list (1000 credentials) median 0.21 s, max 0.23 s, 412 kB

Exit code 1 when a median is one second or more (the issue's budget).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from kubernetes import client

from cloudcred.cli import api
from cloudcred.console.cache import ConsoleCache, slim
from cloudcred.console.server import Console

BUDGET = 1.0
PROVIDERS = ("AWS", "GCP", "AZURE", "SCALEWAY")
CONDITIONS = ("Ready", "Reconciling", "Stalled", "Verified", "InUse", "RotationRecommended",
              "DeletionBlocked", "RolloutComplete")  # fmt: skip


def credential(number: int, clusters: list[tuple[str, str]]) -> dict[str, Any]:
    provider = PROVIDERS[number % len(PROVIDERS)]
    namespace, name = f"team-{number % 50:02d}", f"cred-{number:04d}"
    block = {"AWS": {"accessKeyId": f"AKIA{number:016d}",
                     "secretAccessKeyRef": {"name": f"{name}-keys", "key": "secretAccessKey"}},
             "GCP": {"serviceAccountKeyRef": {"name": f"{name}-key", "key": "key.json"}},
             "AZURE": {"tenantId": "t", "subscriptionId": "s", "clientId": f"client-{number}",
                       "clientSecretRef": {"name": f"{name}-secret", "key": "clientSecret"}},
             "SCALEWAY": {"accessKey": f"SCW{number:017d}",
                          "secretKeyRef": {"name": f"{name}-key",
                                           "key": "secretKey"}}}[provider]  # fmt: skip
    conditions = [
        {"type": kind, "status": "True" if kind in ("Ready", "Verified", "InUse",
                                                    "RolloutComplete") else "False",
         "reason": kind, "message": f"the {kind} message of {name}, a sentence of some length",
         "lastTransitionTime": "2026-12-01T00:00:00Z", "observedGeneration": 1}
        for kind in CONDITIONS
    ]  # fmt: skip
    listed = [{"namespace": ns, "name": cluster} for ns, cluster in clusters[:2000]]
    return {
        "apiVersion": "cloudcred.io/v1alpha1", "kind": "CloudCredential",
        "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{number}",
                     "generation": 1, "creationTimestamp": "2026-11-01T00:00:00Z",
                     "managedFields": [{"manager": "kubectl", "fieldsV1": {}}]},
        "spec": {"provider": provider, provider.lower(): block,
                 "rotation": {"policy": "Automatic" if number % 3 == 0 else "Manual",
                              "maxAge": "90d"}},
        "status": {
            "observedGeneration": 1, "publicId": f"public-id-of-{name}",
            "identity": f"arn:aws:iam::123456789012:user/{name}", "revision": "v2-0123456789ab",
            "clusters": listed, "clusterCount": len(clusters),
            "clustersTruncated": len(clusters) > len(listed),
            "rollout": {"revision": "v2-0123456789ab", "updated": len(clusters),
                        "total": len(clusters)},
            "keyCreatedTime": "2026-10-01T00:00:00Z",
            "key": {"id": f"key-{number}", "createdTime": "2026-10-01T00:00:00Z"},
            "rotation": {"phase": "Idle", "nextRotationTime": "2027-01-01T00:00:00Z"},
            "conditions": conditions,
        },
    }  # fmt: skip


def cluster(namespace: str, name: str, owner: tuple[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}"},
        "spec": {"provider": "AWS", "region": "eu-west-3",
                 "credentialRef": {"name": owner[1], "namespace": owner[0]}},
        "status": {"credential": {"namespace": owner[0], "name": owner[1],
                                  "revision": "v2-0123456789ab"},
                   "deployedRevision": "v2-0123456789ab",
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]},
    }  # fmt: skip


def filled(credentials: int, clusters: int) -> Console:
    """A console whose cache holds the fleet; its client points at a closed port."""
    owners = [(f"team-{n % 50:02d}", f"cred-{n:04d}") for n in range(credentials)]
    # The first credential holds half the clusters, the others share the rest.
    first = clusters // 2
    assigned: dict[int, list[tuple[str, str]]] = {n: [] for n in range(credentials)}
    cluster_objects = []
    for number in range(clusters):
        owner = 0 if number < first else 1 + number % max(credentials - 1, 1)
        owner = min(owner, credentials - 1)
        key = (owners[owner][0], f"cluster-{number:05d}")
        assigned[owner].append(key)
        cluster_objects.append(cluster(*key, owners[owner]))
    closed = client.Configuration(host="http://127.0.0.1:9")
    kube = api.Kube(api=client.ApiClient(configuration=closed), namespace="default")
    cache = ConsoleCache(kube, None)
    now = time.monotonic()
    cache.credentials.replace({owners[n]: slim(credential(n, sorted(assigned[n])))
                               for n in range(credentials)}, now)  # fmt: skip
    cache.clusters.replace({(c["metadata"]["namespace"], c["metadata"]["name"]): slim(c)
                            for c in cluster_objects}, now)  # fmt: skip
    return Console(kube, cache, clock=lambda: datetime(2026, 12, 5, tzinfo=UTC))


async def measure(console: Console, pages: dict[str, str], repeats: int) -> dict[str, Any]:
    server = TestServer(console.app(), host="127.0.0.1")
    await server.start_server()
    console.port = server.port or 0
    figures = {}
    async with TestClient(server) as session:
        login = await session.get(f"/?token={console.sessions.new_login()}",
                                  allow_redirects=False)  # fmt: skip
        assert login.status == 303
        for label, path in pages.items():
            times, size = [], 0
            for _ in range(repeats):
                started = time.perf_counter()
                answer = await session.get(path)
                body = await answer.read()
                times.append(time.perf_counter() - started)
                assert answer.status == 200, (path, answer.status)
                size = len(body)
            figures[label] = (statistics.median(times), max(times), size)
    return figures


def main(argv: list[str]) -> int:
    credentials = int(argv[0]) if argv else 1000
    clusters = int(argv[1]) if len(argv) > 1 else 10_000
    repeats = int(argv[2]) if len(argv) > 2 else 5
    started = time.perf_counter()
    console = filled(credentials, clusters)
    print(f"bench: console cache of {credentials} credentials and {clusters} clusters filled "
          f"in {time.perf_counter() - started:.2f} s")  # fmt: skip
    first = "/credentials/team-00/cred-0000"
    biggest = clusters // 2
    pages = {
        f"list ({credentials} credentials)": "/",
        "list filtered and sorted": "/?provider=AWS&sort=clusters&order=desc",
        f"json ({credentials} credentials)": "/api/credentials",
        "credential page": first,
        f"associated clusters ({biggest} clusters)": first + "/clusters",
    }
    figures = asyncio.run(measure(console, pages, repeats))
    over = []
    for label, (median, slowest, size) in figures.items():
        print(f"bench: console {label} median {median:.3f} s, max {slowest:.3f} s, "
              f"{size / 1000:.0f} kB")  # fmt: skip
        if median >= BUDGET:
            over.append(label)
    if over:
        print(f"bench: console over the {BUDGET:g} s budget: {', '.join(over)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
