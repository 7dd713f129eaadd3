"""Marks the credential reconciler wrote and has not seen come back yet.

A cluster marked with ``cloudcred.io/redeploy-revision`` counts as marked from the
moment the write succeeds, before the watch brings the change back: the rollout's
concurrency limit (``spec.rollout.maxConcurrent``) must not let the next plan mark
more. The store itself is never written to (it holds what the API server said); an
expectation counts only for the object it was written to (its UID), and is dropped
once the store shows the mark. Like Kubernetes' ``ControllerExpectations``, for one
field. Owned by the credential reconciler alone.
"""

from __future__ import annotations

import dataclasses

from cloudcred.bindings import ClusterInfo, Key


class MarkExpectations:
    def __init__(self) -> None:
        self._marks: dict[Key, tuple[str | None, str]] = {}  # key -> (uid, revision)

    def expect(self, cluster: ClusterInfo, revision: str) -> None:
        self._marks[cluster.key] = (cluster.uid, revision)

    def forget(self, key: Key) -> None:
        self._marks.pop(key, None)

    def apply(self, cluster: ClusterInfo) -> ClusterInfo:
        """The cluster with the mark written for it, if the store does not show it yet."""
        expected = self._marks.get(cluster.key)
        if expected is None:
            return cluster
        uid, revision = expected
        if uid != cluster.uid or revision == cluster.marked:
            del self._marks[cluster.key]  # seen, or another object under the name now
            return cluster
        return dataclasses.replace(cluster, marked=revision)

    def in_flight(self, cluster: ClusterInfo, revision: str | None) -> bool:
        """A mark of ``revision`` was written to this cluster (this UID) and the store
        does not show it yet: its echo is still to come. Read-only (the wiring asks)."""
        expected = self._marks.get(cluster.key)
        return (revision is not None and expected == (cluster.uid, revision)
                and cluster.marked != revision)  # fmt: skip

    def __len__(self) -> int:
        return len(self._marks)
