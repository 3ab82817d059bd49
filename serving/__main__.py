"""``python -m serving``: start the model server on port 3000 and say where it is.

The bearer token for ``POST /reload`` comes from ``TMSOPS_SERVING_RELOAD_TOKEN`` or,
when that is unset, from ``state/model-server.token`` (created once, random).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

TOKEN_FILE = Path("state/model-server.token")


def reload_token() -> str:
    if token := os.environ.get("TMSOPS_SERVING_RELOAD_TOKEN"):
        return token
    if not TOKEN_FILE.is_file():
        TOKEN_FILE.parent.mkdir(parents=True, exist_ok=True)
        TOKEN_FILE.write_text(secrets.token_urlsafe(32) + "\n")
        TOKEN_FILE.chmod(0o600)
    return TOKEN_FILE.read_text().strip()


def main() -> None:
    port = os.environ.get("TMSOPS_SERVING_PORT", "3000")
    host = os.environ.get("TMSOPS_SERVING_HOST", "127.0.0.1")
    os.environ["TMSOPS_SERVING_RELOAD_TOKEN"] = reload_token()
    print(f"\nModel server: http://{host}:{port}  (API docs at /, OpenAPI at /docs.json, readiness at /readyz)")
    print(
        f"POST /reload token: in {TOKEN_FILE} (or TMSOPS_SERVING_RELOAD_TOKEN). Ctrl-C stops the server.\n", flush=True
    )
    bentoml = Path(sys.executable).parent / "bentoml"
    os.execv(bentoml, [str(bentoml), "serve", "serving.service:ModelServer", "--host", host, "--port", port])


if __name__ == "__main__":
    main()
