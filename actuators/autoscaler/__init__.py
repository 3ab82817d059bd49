"""The autoscaler (port 8011): forecast-driven scaling that acts before the load arrives, with backtesting."""
