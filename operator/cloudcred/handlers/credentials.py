"""Which replica acts: kopf's peering, told to the controllers.

kopf runs daemons only on the active replica (peering): a daemon per credential that
does nothing but start (this replica acts) and stop with ``OPERATOR_PAUSING`` (another
one acts now) is how the controllers hear of it. Checking credentials is the
verification controller's (``controllers/verification.py``), rotating them the
rotation controller's.
"""

from __future__ import annotations

from typing import Any

import kopf

from cloudcred.constants import CREDENTIAL_RESOURCE


@kopf.daemon(CREDENTIAL_RESOURCE, cancellation_timeout=5.0)
async def replica_active(memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    memo.controllers.resume()
    try:
        await stopped.wait()
    finally:
        if stopped.reason and kopf.DaemonStoppingReason.OPERATOR_PAUSING in stopped.reason:
            memo.controllers.pause()
