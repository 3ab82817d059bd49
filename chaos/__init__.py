"""The chaos wing of tmsops (port 8013): safeguarded fault-injection experiments (see DESIGN.md).

``experiment`` (validated experiments, fault-type mapping), ``safety`` (the rules and the emergency
stop), ``journal`` (experiments, injections, probe results, events), ``probes``, ``rollback``,
``runner`` (one run, crash recovery), ``score``, ``api``, ``dashboard``, ``service`` (``python -m chaos``).
"""
