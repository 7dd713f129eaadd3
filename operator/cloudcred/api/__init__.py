"""The API of cloudcred: pydantic models that the CRD schemas are generated from."""

from cloudcred.api.cluster import Cluster, ClusterSpec, ClusterStatus, CredentialRef, DeployMode
from cloudcred.api.common import Condition, ConditionStatus, LabelSelector, ObjectRef, Provider
from cloudcred.api.credential import CloudCredential, CloudCredentialSpec, CloudCredentialStatus

__all__ = [
    "CloudCredential",
    "CloudCredentialSpec",
    "CloudCredentialStatus",
    "Cluster",
    "ClusterSpec",
    "ClusterStatus",
    "Condition",
    "ConditionStatus",
    "CredentialRef",
    "DeployMode",
    "LabelSelector",
    "ObjectRef",
    "Provider",
]
