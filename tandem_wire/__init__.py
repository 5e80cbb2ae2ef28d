"""Generated wire code of the cloud service's gRPC contract (protos/); regenerate, never edit."""
