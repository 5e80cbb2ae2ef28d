"""The device-fleet simulator: held-out users replayed as devices against a running cloud."""
