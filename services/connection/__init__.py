"""Members, connections, follows, blocks and lists (write side)."""
