"""actuators wing of tmsops (see DESIGN.md)."""
