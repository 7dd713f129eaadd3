"""Bytes the cluster store keeps per Cluster (``ClusterInfo.from_body``).

Usage: python -m bench.cache_size CLUSTERS.json [COUNT]

CLUSTERS.json: ``kubectl get clusters.cloudcred.io -A -o json --show-managed-fields``
from a cluster the operator has bound and deployed (a test or bench control plane);
only the Clusters the operator wrote to are used. COUNT records (default 10 000) are
built from them, each body parsed on its own as a watch event is, and the memory they
keep once the bodies are gone is measured with tracemalloc. Run it with another
checkout's ``operator/`` first on PYTHONPATH to compare with that code.
"""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc

import cloudcred
from cloudcred.bindings import ClusterInfo


def main() -> None:
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    with open(sys.argv[1]) as file:
        items = json.load(file)["items"]
    items = [item for item in items if (item.get("status") or {}).get("conditions") and any(
        m.get("manager") == "cloudcred-binder" for m in item["metadata"].get("managedFields", [])
    )]  # fmt: skip
    if not items:
        sys.exit("no Cluster the operator wrote to (was --show-managed-fields given?)")
    texts = []
    for number in range(count):
        body = dict(items[number % len(items)])
        body["metadata"] = dict(body["metadata"], name=f"c{number:05d}",
                                uid=f"{number:08d}-0000-4000-8000-000000000000")  # fmt: skip
        texts.append(json.dumps(body))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [ClusterInfo.from_body(json.loads(text)) for text in texts]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    print(f"{cloudcred.__file__}: {len(kept)} clusters from {len(items)} distinct bodies "
          f"(~{sum(map(len, texts)) / count:.0f} B of JSON each): "
          f"{(after - before) / count:.0f} B kept per cluster")  # fmt: skip


if __name__ == "__main__":
    main()
