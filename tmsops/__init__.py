"""tmsops shared core: settings, errors, clients and the command line."""
