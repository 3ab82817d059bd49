"""tmsops shared core: settings, errors, clients and the command line."""

__version__ = "0.1.0"
