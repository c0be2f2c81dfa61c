"""The worker: Celery tasks, slice claiming, GPU pinning, model cache and runners.

Importing this package must not import torch: the launcher and the Celery parent
process stay free of CUDA; runners import torch when a model is loaded.
"""
