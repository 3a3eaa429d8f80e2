"""A lab's shared services: the MLflow tracking server (`server`) on its private PostgreSQL cluster (`postgres`),
and the MLflow UI on the local store (`ui`)."""
