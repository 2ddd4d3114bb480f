"""introspect: a gRPC service that looks inside transformer models.

Importing this package is cheap: torch and transformers load only with the modules that
need them (models, probe, engine, methods).
"""

__version__ = "0.1.0"
