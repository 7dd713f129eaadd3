"""The one startup handler: kopf's settings and the shared state in ``memo``."""

from __future__ import annotations

import asyncio
import os
from functools import partial
from typing import Any

import kopf

from cloudcred.binder import Binder
from cloudcred.config import Settings
from cloudcred.constants import FINALIZER, KOPF_STORAGE_PREFIX
from cloudcred.handlers.credentials import secret_changed
from cloudcred.kube import Kube, load_client_configuration
from cloudcred.secretwatch import SecretWatcher


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
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_STORAGE_PREFIX, key="last-handled-configuration"
    )
    settings.posting.reporting_component = "cloudcred"
    settings.batching.worker_limit = config.worker_limit
    # kopf keeps one worker per object until it has been idle this long; with the
    # default 5 s, a burst of events over more objects than worker_limit stalls.
    settings.batching.idle_timeout = 1.0
    # Reconnect watches regularly, so a silently dropped connection is noticed.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10

    memo.settings = config
    memo.kube = Kube(await asyncio.to_thread(load_client_configuration))
    memo.verification_slots = asyncio.Semaphore(config.verification_concurrency)
    memo.credential_locks = {}
    memo.verified_conditions = {}
    memo.last_checks = {}
    memo.binder = Binder(memo.kube, config, memo.verification_slots)
    memo.binder_task = asyncio.create_task(memo.binder.run(), name="cloudcred-binder")
    memo.background_tasks = set()
    memo.secret_watcher = SecretWatcher(
        memo.kube.api, asyncio.get_running_loop(), partial(secret_changed, memo=memo)
    )
    memo.secret_watcher.start()
    logger.info("cloudcred settings: %s", config.model_dump_json())


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.secret_watcher.stop()
    memo.binder_task.cancel()
