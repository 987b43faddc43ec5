"""The daemon: the loop that claims and runs tasks, and what runs beside it (housekeeping, health,
the listener)."""
