"""Faust agents: one thin module per stage, wiring topics and tables to `pipeline`."""
