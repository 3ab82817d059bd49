"""serving wing of tmsops (see DESIGN.md)."""
