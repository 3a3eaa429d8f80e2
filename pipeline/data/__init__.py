"""Data access: what a dataset config names (`datasets`), where its files come from (`sources`, `remote`), how each
on-disk format is read (`readers/`), the catalog of datasets and suites, and the prompt sets."""
