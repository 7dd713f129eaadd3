"""The watch events kopf delivers: CloudCredentials into the caches; Clusters, with
peering only, as the sign that this replica is active.

Clusters are followed by the operator's own LIST+WATCH (``cache/informers.py``): kopf
handled each of their events, the echoes of the operator's own writes included, with
more CPU than everything the operator then does about it. With kopf's peering, a
replica acts only once kopf shows it is the active one, and a Cluster event is such a
sign where no credential exists yet: ``watch_clusters_for_peering`` registers that
handler before kopf starts. ``async``: the handlers run on the event loop, where the
caches live (kopf runs plain functions in worker threads).
"""

from __future__ import annotations

from typing import Any

import kopf

from cloudcred.constants import CLUSTER_RESOURCE, CREDENTIAL_RESOURCE


async def cluster_sign(memo: kopf.Memo, **_: Any) -> None:
    memo.controllers.kopf_sign()


def watch_clusters_for_peering() -> None:
    """With peering: kopf follows Clusters too, for the sign that this replica acts."""
    kopf.on.event(CLUSTER_RESOURCE)(cluster_sign)


@kopf.on.event(CREDENTIAL_RESOURCE)
async def credential_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.controllers.credential_event(type, dict(body))
