"""kopf handlers: thin functions that call the plain logic elsewhere in the package.

Importing this package registers every handler with kopf's default registry.
"""

from cloudcred.handlers import credentials, deletion, events, startup

__all__ = ["credentials", "deletion", "events", "startup"]
