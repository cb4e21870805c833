"""Test and tooling support: one way to start a Spanner emulator and a local cluster."""
