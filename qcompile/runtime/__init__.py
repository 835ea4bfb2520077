"""Running compiled artifacts: loading, running, benchmarking (locally and over RPC)."""
