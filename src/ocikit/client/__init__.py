"""Getting images in and out: locations in skopeo's syntax (:mod:`.transports`) and remote
registries: an async OCI Distribution client with the ``docker://`` transport
(:class:`RegistrySource`, :class:`RegistryDestination`), authentication from the usual
credential stores, and the command-line flags every registry command shares."""

from .errors import AuthenticationError, RegistryError, RegistryNotFound, UploadLost
from .options import ClientOptions, OptionsError, add_client_arguments, client_options_from_args
from .registry import RegistryDestination, RegistrySource, open_destination, open_source
from .session import RegistryClient

__all__ = [
    "AuthenticationError",
    "ClientOptions",
    "OptionsError",
    "RegistryClient",
    "RegistryDestination",
    "RegistryError",
    "RegistryNotFound",
    "RegistrySource",
    "UploadLost",
    "add_client_arguments",
    "client_options_from_args",
    "open_destination",
    "open_source",
]
