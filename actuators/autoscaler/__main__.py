"""``python -m actuators.autoscaler``: the autoscaler service on its port (8011 by default)."""

from actuators.autoscaler.service import main

if __name__ == "__main__":
    main()
