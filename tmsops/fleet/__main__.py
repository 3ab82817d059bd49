"""``python -m tmsops.fleet run``: the same as ``tmsops fleet run``."""

from tmsops.fleet.cli import app

if __name__ == "__main__":
    app(prog_name="python -m tmsops.fleet")
