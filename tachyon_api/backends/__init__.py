"""Durable task backends: the same ``add_task`` call, stored outside the process."""
