"""Private: the Rust core (no public names)."""
