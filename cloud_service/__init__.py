"""tandemrec cloud service: one async core (`service.RecommendationService`) behind gRPC and
FastAPI, with Redis or an in-process store, a model registry and micro-batched teacher calls.

Entry point: `tandem serve` (`server.serve`); settings: `settings.CloudSettings`.
"""
