"""Model backends behind the engine protocol."""
