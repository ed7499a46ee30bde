"""Engagement and milestones (write side)."""
