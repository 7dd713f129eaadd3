"""Marks the operator wrote and has not seen come back yet.

A cluster marked with ``cloudcred.io/redeploy-revision`` counts as marked from the
moment the write succeeds, before the watch brings the change back: the rollout's
concurrency limit (``spec.rollout.maxConcurrent``) must not let the next plan mark
more. The store itself is never written to (it holds what the API server said); the
expectation is dropped once the store shows the mark, or the cluster goes away.
Like Kubernetes' ``ControllerExpectations``, for one field.
"""

from __future__ import annotations

import dataclasses

from cloudcred.bindings import ClusterInfo, Key


class MarkExpectations:
    def __init__(self) -> None:
        self._marks: dict[Key, str] = {}

    def expect(self, key: Key, revision: str) -> None:
        self._marks[key] = revision

    def observe(self, cluster: ClusterInfo) -> None:
        """The store has a new version of this cluster."""
        if cluster.key in self._marks and self._marks[cluster.key] == cluster.marked:
            del self._marks[cluster.key]

    def forget(self, key: Key) -> None:
        self._marks.pop(key, None)

    def apply(self, cluster: ClusterInfo) -> ClusterInfo:
        """The cluster with the mark written for it, if the store does not show it yet."""
        expected = self._marks.get(cluster.key)
        if expected is None or expected == cluster.marked:
            return cluster
        return dataclasses.replace(cluster, marked=expected)
