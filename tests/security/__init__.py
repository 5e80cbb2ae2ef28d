"""Security tier: object-level authorization, rate limits, admin input, hostile clients."""
