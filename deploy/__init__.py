"""What running the pipeline beyond one laptop needs: a tracking server, Kubernetes, Databricks."""
