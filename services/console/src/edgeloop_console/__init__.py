"""EdgeLoop console: a web UI over the services' HTTP APIs (docs/console.md)."""
