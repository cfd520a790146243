"""Reports rendered from the results database (tables now; plots with the training methods)."""

from copsd.reports.tables import Table, build_table, render

__all__ = ["Table", "build_table", "render"]
