"""Which replica acts: kopf's peering, told to the controllers.

kopf runs daemons only on the active replica (peering): a daemon per credential that
does nothing but start (this replica acts) and stop with ``OPERATOR_PAUSING`` (another
one acts now) is how the controllers hear of it. Checking credentials is the
verification controller's (``controllers/verification.py``), rotating them the
rotation controller's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from cloudcred.constants import CREDENTIAL_RESOURCE

# The daemons' tasks, referenced until they end: when a credential is deleted and made
# again under its name at once, kopf can drop its only reference to the old daemon's
# task, which the garbage collector then destroys mid-await (a GeneratorExit traceback).
_RUNNING: set[asyncio.Task[Any]] = set()


@kopf.daemon(CREDENTIAL_RESOURCE, cancellation_timeout=5.0)
async def replica_active(memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    task = asyncio.current_task()
    if task is not None:
        _RUNNING.add(task)
    memo.controllers.resume()
    try:
        await stopped.wait()
    finally:
        if task is not None:
            _RUNNING.discard(task)
        if stopped.reason and kopf.DaemonStoppingReason.OPERATOR_PAUSING in stopped.reason:
            memo.controllers.pause()
