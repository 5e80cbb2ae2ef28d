"""tandemrec cloud service: one async core behind gRPC and FastAPI (issue 3, not built yet).

The retrieval it will serve with lives in `tandemrec.retrieval` and the teacher in
`tandemrec.models.teacher`; this package will hold the service core and its two transports.
"""
