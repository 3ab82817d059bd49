"""Targets: the services tmsops operates, behind one interface with two backends.

:class:`tmsops.targets.base.Target` is the interface; ``tmsops.targets.fleet`` reaches the
local fleet of real processes (the default), ``tmsops.targets.kubernetes`` a cluster.
"""
