"""The `genq` command line: the one place that may import both web and worker."""
