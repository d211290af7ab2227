"""Placeholder; built in the adapters issue."""
