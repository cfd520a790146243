"""Reports rendered from the results database: comparison tables (`tables` holds their numbers,
`table_formats` writes them), result figures (`figures`), training curves (`curves`), the one-page
HTML report (`html_report`); `plots` is how every figure is drawn, `output` where reports go."""

from copsd.reports.table_formats import render
from copsd.reports.tables import Table, build_table

__all__ = ["Table", "build_table", "render"]
