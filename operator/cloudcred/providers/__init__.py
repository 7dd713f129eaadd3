"""One module per cloud, all with the interface described in ``base``."""

from __future__ import annotations

from types import ModuleType

from cloudcred.api.common import Provider


def provider_module(provider: Provider | str) -> ModuleType:
    """The module that knows this provider (imported lazily: optional libraries
    are only needed by the provider that uses them)."""
    from cloudcred.providers import aws, azure, gcp, scaleway

    modules = {
        Provider.AWS: aws,
        Provider.GCP: gcp,
        Provider.AZURE: azure,
        Provider.SCALEWAY: scaleway,
    }
    return modules[Provider(provider)]
