#!/bin/sh
# The tmsops image's entrypoint: the first argument names the service to run.
# Settings come from $TMSOPS_CONFIG (a tmsops.yaml) and TMSOPS_* variables; the model server
# reads TMSOPS_SERVING_* (TMSOPS_SERVING_HOST, _PORT, _TRACKING_URI, _RELOAD_TOKEN).
set -eu

usage() {
    cat <<'USAGE'
usage: <image> SERVICE | COMMAND [ARGS...]

services:
  model-server   BentoML model server (python -m serving), port 3000: /livez /readyz /metrics
  autoscaler     python -m actuators.autoscaler, port 8011: /health /metrics /docs /dashboard
  optimizer      python -m actuators.optimizer, port 8012
  chaos          python -m chaos, port 8013
  fleet          tmsops fleet run: the local fleet's control API, port 8010
anything else runs as a command, e.g. `tmsops --help`.
USAGE
}

if [ "$#" -eq 0 ]; then
    usage
    exit 64
fi

service="$1"
shift
case "$service" in
    model-server) exec python -m serving "$@" ;;
    autoscaler) exec python -m actuators.autoscaler "$@" ;;
    optimizer) exec python -m actuators.optimizer "$@" ;;
    chaos) exec python -m chaos "$@" ;;
    fleet) exec tmsops fleet run "$@" ;;
    help | -h | --help) usage ;;
    *) exec "$service" "$@" ;;
esac
