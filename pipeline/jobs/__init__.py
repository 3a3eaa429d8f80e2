"""Jobs of a sweep: the scoring job (`scoring`), the explain job (`explaining`), the job's own MLflow run
(`job_run`) and the sweep's run (`sweep`)."""
