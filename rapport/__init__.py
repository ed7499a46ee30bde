"""Rapport's tooling: the `rapport` command, local stack and supervisor, demo loader, docs
generator. Above the services: it imports them; nothing in `shared/` or `services/` imports it."""
