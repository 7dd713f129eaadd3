"""The watch events kopf delivers for Clusters and CloudCredentials, into the caches.

Each handler hands the event to the controllers, which update the store and queue
the keys it concerns; nothing else happens here. ``async``: they run on the event
loop, where the caches live (kopf runs plain functions in worker threads).
"""

from __future__ import annotations

from typing import Any

import kopf

from cloudcred.constants import CLUSTER_RESOURCE, CREDENTIAL_RESOURCE


@kopf.on.event(CLUSTER_RESOURCE)
async def cluster_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.controllers.cluster_event(type, dict(body))


@kopf.on.event(CREDENTIAL_RESOURCE)
async def credential_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.controllers.credential_event(type, dict(body))
