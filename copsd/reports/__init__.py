"""Reports rendered from the results database: comparison tables and training-dynamics plots."""

from copsd.reports.tables import Table, build_table, render

__all__ = ["Table", "build_table", "render"]
