"""Reports from score records: the records themselves (`results`), tables and their layouts, plots, comparisons
with intervals, report.html, and the published reference data they are checked against (`published/`)."""
