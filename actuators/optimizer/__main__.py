"""``python -m actuators.optimizer``: the optimizer service on its port (8012 by default)."""

from actuators.optimizer.service import main

if __name__ == "__main__":
    main()
