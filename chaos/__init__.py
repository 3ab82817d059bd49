"""chaos wing of tmsops (see DESIGN.md)."""
