"""cloudcred: a Kubernetes operator for cloud-provider credentials."""

__version__ = "0.1.0"
