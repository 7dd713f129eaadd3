"""Names shared by the operator, its manifests and its tests."""

GROUP = "cloudcred.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

CREDENTIAL_KIND = "CloudCredential"
CREDENTIAL_PLURAL = "cloudcredentials"
CLUSTER_PLURAL = "clusters"
BOUNDARY_KIND = "CredentialBoundary"
BOUNDARY_PLURAL = "credentialboundaries"  # cluster-scoped
PERMISSION_SET_KIND = "PermissionSet"
PERMISSION_SET_PLURAL = "permissionsets"  # cluster-scoped
# Cluster API also has a "clusters" resource: always use the full name.
CREDENTIAL_RESOURCE = f"{CREDENTIAL_PLURAL}.{GROUP}"
CLUSTER_RESOURCE = f"{CLUSTER_PLURAL}.{GROUP}"

FINALIZER = f"{GROUP}/finalizer"
# kopf's own bookkeeping lives under a sub-domain so that kopf's diffing still sees
# the cloudcred.io/* annotations below.
KOPF_STORAGE_PREFIX = f"kopf.{GROUP}"
REDEPLOY_ANNOTATION = f"{GROUP}/redeploy-revision"
ROLLOUT_PAUSED_ANNOTATION = f"{GROUP}/rollout-paused"
FORCE_DELETE_ANNOTATION = f"{GROUP}/force-delete"
# Who set force-delete: an admission policy makes it the requester's own user name.
FORCE_DELETE_BY_ANNOTATION = f"{GROUP}/force-delete-by"
# On Secrets referenced by an in-use credential; the admission policy refuses their deletion.
IN_USE_LABEL = f"{GROUP}/in-use"
# On every Secret a credential references: the operator watches exactly these Secrets
# (a label-selected watch), so it never streams unrelated Secrets' data.
REFERENCED_LABEL = f"{GROUP}/credential-secret"
# On the Secrets the operator delivers to clusters (spec.credentialsSecret).
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
DELIVERED_REVISION_ANNOTATION = f"{GROUP}/revision"
EXPIRES_ANNOTATION = f"{GROUP}/expires-at"

# The field manager of the binding and rollout reconcilers (clusters, credentials).
BINDER_MANAGER = "cloudcred-binder"
# Where the chart and deploy/ install the operator (the CLI's default for its Secrets).
DEFAULT_OPERATOR_NAMESPACE = "cloudcred-system"
