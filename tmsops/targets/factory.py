"""The target a service acts on, from its settings: the local fleet (default) or Kubernetes."""

from __future__ import annotations

from tmsops.auth import TokenStore, service_token
from tmsops.settings import CoreSettings, ScalingSettings
from tmsops.targets.base import Target


def open_target(settings: CoreSettings, *, caller: str, tokens: TokenStore) -> Target:
    """A client of the configured target; on the fleet without a configured token, ``caller`` issues itself one."""
    if settings.target.kind == "kubernetes":
        from tmsops.targets.kubernetes import KubernetesTarget

        scaling = getattr(settings, "scaling", None) or ScalingSettings()
        return KubernetesTarget(
            settings.target.kubernetes,
            default_min_replicas=scaling.min_replicas,
            default_max_replicas=scaling.max_replicas,
        )
    from tmsops.targets.fleet import FleetTarget

    fleet = settings.target.fleet
    token = fleet.token.get_secret_value() if fleet.token else service_token(tokens, caller)
    return FleetTarget(fleet.url, token, timeout_s=fleet.timeout.total_seconds())
