"""The results store: an MLflow tracking store (SQLite or a server) holding a run per computed stage, served again
by content key (`cache`), with checksummed artifacts, claims that keep parallel jobs from computing a key twice,
and links into the MLflow UI."""
