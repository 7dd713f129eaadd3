"""What the operator knows: one store per kind it depends on, and the questions the
reconcilers ask of them.

- ``credentials`` and ``clusters`` are fed by kopf's watches (``handlers/events.py``)
  and repaired by the operator's own paginated LISTs (``informers.CustomResourceLister``);
- ``secrets`` (only those labelled ``cloudcred.io/credential-secret``; labels and a
  digest of the data, never the data) and ``namespaces`` (labels) are fed by the
  operator's own LIST+WATCH threads (``informers.Informer``);
- ``permission_sets`` (PermissionSets, cluster-scoped; ``permissions.PermissionSetInfo``)
  likewise;
- ``delivered`` (Secrets labelled ``app.kubernetes.io/managed-by=cloudcred``: UID, owner
  and the in-use label, never the data), indexed by their owner Cluster's UID, so a
  delivered Secret is found whatever name the Cluster's spec gives now;
- ``installation_key`` (the installation Secret in the operator's namespace, by its own
  LIST+WATCH of that one name): whether it holds the key the operator uses, and a
  digest of its data, never the key;
- ``boundaries`` (CredentialBoundaries, cluster-scoped) by another such thread
  (``informers.Informer`` over the custom objects API; ``cache.boundaries.boundary_info``
  converts them), so they are followed whatever namespaces the
  operator watches and while kopf's peering pauses it.

``synced`` is True only when every store has taken in a full LIST since the start or
since its last watch gap: the workers take no key before (``controllers/runner.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cloudcred import bindings, boundary
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.bindings import ClusterInfo, CredentialInfo
from cloudcred.cache.store import Change, Key, Store
from cloudcred.permissions import PermissionSetInfo

__all__ = ["Caches", "Change", "DeliveredInfo", "Key", "KeySecretInfo", "SecretInfo", "Store"]


@dataclass(frozen=True)
class SecretInfo:
    """A labelled Secret as the operator keeps it: its two labels and a digest of its
    data (to notice a change), never the data."""

    referenced: bool  # cloudcred.io/credential-secret
    in_use: bool  # cloudcred.io/in-use
    digest: str


@dataclass(frozen=True)
class DeliveredInfo:
    """A Secret labelled as the operator's: its UID, the Cluster that is its controller
    owner (None when it has none), and whether it carries ``cloudcred.io/in-use``."""

    uid: str
    owner_uid: str | None
    in_use: bool


@dataclass(frozen=True)
class KeySecretInfo:
    """The installation Secret as the operator follows it while it runs: whether its data
    holds the key the operator loaded at start, and a digest of the data (to notice each
    change), never the key."""

    uid: str
    holds_key_in_use: bool
    digest: str


class Caches:
    def __init__(self, boundary_default_deny: bool = False) -> None:
        # The installation's CLOUDCRED_BOUNDARY_DEFAULT=Deny: no boundary, no use.
        self.boundary_default_deny = boundary_default_deny
        self.credentials: Store[CredentialInfo] = Store(
            "CloudCredential",
            {"secret": lambda c: [(c.namespace, name) for name in c.secret_names],
             "permission_set": lambda c: c.permission_sets},
        )  # fmt: skip
        self.clusters: Store[ClusterInfo] = Store(
            "Cluster",
            {"credential": lambda c: [c.credential], "namespace": lambda c: [c.namespace],
             "permission_set": lambda c: c.permission_sets},
        )  # fmt: skip
        self.secrets: Store[SecretInfo] = Store("Secret")
        self.delivered: Store[DeliveredInfo] = Store(
            "DeliveredSecret", {"owner": lambda d: [d.owner_uid] if d.owner_uid else []}
        )
        self.namespaces: Store[dict[str, str]] = Store("Namespace")
        self.boundaries: Store[boundary.Boundary] = Store("CredentialBoundary")
        self.permission_sets: Store[PermissionSetInfo] = Store("PermissionSet")
        self.installation_key: Store[KeySecretInfo] = Store("InstallationKey")

    @property
    def stores(self) -> tuple[Store[object], ...]:
        return (self.credentials, self.clusters, self.secrets, self.namespaces,
                self.boundaries, self.permission_sets, self.delivered,
                self.installation_key)  # type: ignore[return-value]  # fmt: skip

    @property
    def boundaries_synced(self) -> bool:
        """Boundaries and namespace labels are fully listed: a boundary check may decide
        (a credential is never checked, let alone used, on the word of a partial list)."""
        return self.boundaries.synced and self.namespaces.synced

    @property
    def synced(self) -> bool:
        return all(store.synced for store in self.stores)

    def unsynced_kinds(self) -> list[str]:
        return [store.kind for store in self.stores if not store.synced]

    # -- questions the reconcilers ask --------------------------------------------------

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        """A namespace's labels; None when it does not exist."""
        return self.namespaces.get(("", namespace))

    def boundary_violation(
        self,
        namespace: str,
        spec: CloudCredentialSpec,
        reported_account: str | None = None,
        gcp_email: str | None = None,
    ) -> str | None:
        """Why a credential of ``namespace`` is outside a CredentialBoundary that selects
        it (a message for users), or None. Ask before every use of a credential, once
        ``boundaries_synced``. ``reported_account``: the account STS reported for a static
        AWS key; ``gcp_email``: the service account of a GCP key."""
        labels = self.namespace_labels(namespace) or {}
        return boundary.violation(spec, namespace, labels, self.boundaries.objects.values(),
                                  reported_account, gcp_email,
                                  default_deny=self.boundary_default_deny)  # fmt: skip

    def rotation_identity(self, namespace: str, provider: str) -> tuple[str, str] | None:
        """The rotation identity (boundary name, Secret name in the operator's namespace)
        for keys of ``provider`` in ``namespace``: the first boundary, by name, that
        selects the namespace and names one."""
        labels = self.namespace_labels(namespace) or {}
        for found in sorted(self.boundaries.objects.values(), key=lambda b: b.name):
            block = getattr(found.spec, provider.lower(), None)
            secret = getattr(block, "rotation_identity_secret", None) if block else None
            if secret and found.selects(labels):
                return found.name, secret
        return None

    def credentials_selected_by(
        self, selects: Callable[[dict[str, str]], bool]
    ) -> list[CredentialInfo]:
        """The credentials whose namespace's labels ``selects`` (a boundary's selector)."""
        found = []
        for credential in self.credentials.objects.values():
            labels = self.namespace_labels(credential.namespace)
            if selects(labels or {}):
                found.append(credential)
        return found

    def decide(self, cluster: ClusterInfo) -> bindings.Binding:
        credential = self.credentials.get(cluster.credential)
        labels = None
        if credential is not None and credential.namespace != cluster.namespace:
            labels = self.namespace_labels(cluster.namespace)
        return bindings.decide(cluster, credential, labels)

    def referencing(self, credential: Key) -> list[ClusterInfo]:
        """The clusters whose spec names this credential, bound or not."""
        found = (self.clusters.get(key) for key in self.clusters.by("credential", credential))
        return [cluster for cluster in found if cluster is not None]

    def bound_clusters(self, credential: Key) -> list[ClusterInfo]:
        """The clusters bound to this credential, in key order."""
        bound = [c for c in self.referencing(credential) if self.decide(c).bound]
        return sorted(bound, key=lambda cluster: cluster.key)

    def in_use(self, credential: Key) -> bool:
        """At least one cluster is bound to this credential."""
        return any(self.decide(cluster).bound for cluster in self.referencing(credential))

    def credentials_needing(self, permission_set: str) -> set[Key]:
        """The credentials checked against a PermissionSet: those that name it, and
        those of the clusters that name it."""
        found = set(self.credentials.by("permission_set", permission_set))
        for key in self.clusters.by("permission_set", permission_set):
            cluster = self.clusters.get(key)
            if cluster is not None:
                found.add(cluster.credential)
        return found

    def credentials_using_secret(self, secret: Key) -> list[CredentialInfo]:
        found = (self.credentials.get(key) for key in self.credentials.by("secret", secret))
        return [credential for credential in found if credential is not None]
