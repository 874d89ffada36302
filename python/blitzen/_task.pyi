"""Private: how a call is pickled and run (no public names)."""
