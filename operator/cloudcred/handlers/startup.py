"""The one startup handler: kopf's settings and the shared state in ``memo``."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf

from cloudcred.config import Settings
from cloudcred.constants import CREDENTIAL_KIND, FINALIZER, KOPF_STORAGE_PREFIX
from cloudcred.controllers.runner import Controllers
from cloudcred.installation import load_installation, operator_namespace
from cloudcred.kube import Kube, load_client_configuration
from cloudcred.metrics import serve as start_metrics


class CredentialDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base, built for CloudCredentials only.

    kopf builds a diff base (a deep copy of the object) for every watch event of every
    kind it follows. Only CloudCredentials have change handlers (on their spec); Clusters
    are only watched, and during a rollout every write to a Cluster comes back as an
    event, so the copies would cost more CPU than the rest of the rollout's bookkeeping.
    """

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        """None for anything but a CloudCredential, without looking: no other kind
        ever gets a diff base (kopf would search the annotations on every event)."""
        if body.get("kind") != CREDENTIAL_KIND:
            return None
        return super().fetch(body=body)

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        if body.get("kind") != CREDENTIAL_KIND:
            return kopf.BodyEssence()
        # kopf copies the whole object and then drops the status; the status lists the
        # bound clusters (large), so it is left out before the copy.
        without_status = kopf.Body(
            cast(kopf.RawBody, {key: value for key, value in body.items() if key != "status"})
        )
        return super().build(body=without_status, extra_fields=extra_fields)


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    config = Settings.from_env(os.environ)
    settings.persistence.finalizer = FINALIZER
    # kopf's bookkeeping under kopf.cloudcred.io/: kopf ignores annotations with its own
    # prefix when diffing, and must not ignore our cloudcred.io/* annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=KOPF_STORAGE_PREFIX
    )
    settings.persistence.diffbase_storage = CredentialDiffBase(
        prefix=KOPF_STORAGE_PREFIX, key="last-handled-configuration"
    )
    settings.posting.reporting_component = "cloudcred"
    settings.queueing.worker_limit = config.worker_limit
    # kopf keeps one worker per object until it has been idle this long; with the
    # default 5 s, a burst of events over more objects than worker_limit stalls.
    settings.queueing.idle_timeout = 1.0
    # Every watch ends after watch_timeout seconds on the server's side and is given
    # up after a little more on ours: a silently dropped connection is noticed.
    settings.watching.server_timeout = config.watch_timeout
    settings.watching.client_timeout = config.watch_timeout + 15
    settings.watching.connect_timeout = 10

    memo.settings = config
    # Kubernetes calls, provider checks and deliveries all run in worker threads: the
    # default pool (CPUs + 4) would make them queue behind each other.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=16, thread_name_prefix="cloudcred")
    )
    memo.kube = Kube(await asyncio.to_thread(load_client_configuration))
    memo.verification_slots = asyncio.Semaphore(config.verification_concurrency)
    memo.deletion_announced = {}
    # The key behind revisions and ExternalIds: nothing is checked before it is known.
    memo.installation = await load_installation(
        memo.kube, operator_namespace(config.operator_namespace),
        list(memo.get("namespaces") or []),
    )  # fmt: skip
    memo.controllers = Controllers(
        memo.kube, config, memo.verification_slots, list(memo.get("namespaces") or []),
        memo.installation, peering=not memo.get("standalone", True),
    )  # fmt: skip
    if config.metrics_port:  # before any task starts: a taken port stops the operator here
        start_metrics(config.metrics_port, memo.controllers)
    memo.controllers.start()
    logger.info("cloudcred settings: %s", config.model_dump_json())
    # Everything imported and set up so far lives as long as the process: the cyclic
    # garbage collector need not look at it again (a full collection walks every
    # object; the modules alone are over 100 000 of them, the caches' come on top).
    gc.freeze()


@kopf.on.probe(id="progress")
async def progress(memo: kopf.Memo, **_: Any) -> str:
    """``/healthz`` fails (HTTP 500) while a watch or a work queue makes no progress:
    Kubernetes then restarts the operator."""
    problems = memo.controllers.problems()
    if problems:
        raise kopf.PermanentError("; ".join(problems))
    return "ok"


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.controllers.stop()
