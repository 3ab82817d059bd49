"""``python -m tmsops.fleet``: run the local fleet and its control API (same as ``tmsops fleet run``)."""

from tmsops.fleet.cli import run

if __name__ == "__main__":
    run()
