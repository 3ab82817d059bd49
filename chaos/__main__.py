"""``python -m chaos``: the chaos service on its port (8013 by default)."""

from chaos.service import main

if __name__ == "__main__":
    main()
