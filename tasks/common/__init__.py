"""What every stage shares: manifests and content hashes, MLflow tracking, document shards."""
