"""The HTTP API (Flask). Never imports torch or the worker package."""
