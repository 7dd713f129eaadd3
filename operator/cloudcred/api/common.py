"""Building blocks shared by both kinds: references, selectors, conditions.

The models here are the single source of the CRD schemas (see ``crd.py``): every
field carries the description that ``kubectl explain`` prints, and the length and
pattern limits that the API server enforces at admission.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# Kubernetes name limits: a DNS subdomain (most object names, Secrets included) and
# a DNS label (namespaces).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SECRET_DATA_KEY = r"^[-._a-zA-Z0-9]+$"
UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class Provider(StrEnum):
    """The cloud providers cloudcred knows."""

    AWS = "AWS"
    GCP = "GCP"
    AZURE = "AZURE"
    SCALEWAY = "SCALEWAY"


class Model(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused.

    ``hide_input_in_errors`` keeps values (which may be secret) out of validation
    error text.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        hide_input_in_errors=True,
        use_enum_values=True,
    )

    def to_api(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SecretKeyRef(Model):
    """A key of a Secret in the credential's own namespace."""

    name: str = Field(
        description="Name of a Secret in the CloudCredential's namespace.",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    key: str = Field(
        description="Key inside the Secret's data that holds the value.",
        min_length=1,
        max_length=253,
        pattern=SECRET_DATA_KEY,
    )


class ObjectRef(Model):
    """A namespaced object, by namespace and name."""

    namespace: str = Field(
        description="Namespace of the object.", min_length=1, max_length=63, pattern=DNS_LABEL
    )
    name: str = Field(
        description="Name of the object.", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN
    )


class LabelSelectorRequirement(Model):
    """One expression of a label selector (the Kubernetes LabelSelectorRequirement)."""

    key: str = Field(description="The label key the selector applies to.", max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key relates to the values: In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] | None = Field(
        default=None,
        description="Label values; non-empty for In and NotIn, empty for Exists and DoesNotExist.",
        max_length=64,
        json_schema_extra={
            "items": {"type": "string", "description": "A label value.", "maxLength": 63}
        },
    )


class LabelSelector(Model):
    """A Kubernetes label selector. An empty selector matches everything."""

    match_labels: dict[str, str] | None = Field(
        default=None,
        description="Labels that must all be present with these values.",
        json_schema_extra={
            "additionalProperties": {
                "type": "string",
                "description": "A label value.",
                "maxLength": 63,
            }
        },
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None,
        description="Expressions that must all hold.",
        max_length=32,
    )


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Model):
    """A condition in the Kubernetes convention (metav1.Condition)."""

    type: str = Field(
        description="Type of the condition, e.g. Verified, InUse, CredentialBound.",
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="One CamelCase word from the documented set for this condition type.",
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
    )
    message: str = Field(default="", description="Human-readable details.", max_length=32768)
    last_transition_time: datetime = Field(
        description="When the status last changed (not when the condition was last checked)."
    )
    observed_generation: int | None = Field(
        default=None,
        description="The .metadata.generation the condition was computed from.",
        ge=0,
    )
