"""What the operator keeps of a CredentialBoundary (``Caches.boundaries``).

Boundaries are cluster-scoped and followed by the operator's own LIST+WATCH
(``informers.Informer`` over the custom objects API), not by kopf: in namespaced mode
kopf serves cluster-scoped kinds only while a watched namespace exists, and stops its
watches while peering pauses the replica; boundaries must be known whatever the
operator watches.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from cloudcred.api.boundary import CredentialBoundarySpec
from cloudcred.api.common import LabelSelector
from cloudcred.boundary import Boundary

logger = logging.getLogger("cloudcred.cache")


def boundary_info(body: dict[str, Any]) -> Boundary:
    """The boundary; one that this version cannot read (stored under another schema)
    fails closed: it selects every namespace and allows no provider until fixed."""
    try:
        return Boundary.from_body(body)
    except ValidationError:
        name = str(body["metadata"]["name"])
        logger.error("CredentialBoundary %s cannot be read by this operator version: no "
                     "credential is allowed until it is fixed", name)  # fmt: skip
        return Boundary(name, CredentialBoundarySpec(namespace_selector=LabelSelector()))
