"""Invitation lifecycle (write side)."""
