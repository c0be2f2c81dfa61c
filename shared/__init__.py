"""Code shared by the web and worker processes: settings, database, the ledger (job and item states),
request schemas, storage, the Celery app and the model registry.

Nothing in this package imports torch or builds anything at import time.
"""
