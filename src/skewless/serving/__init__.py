"""Serving: one framework-free service core, and the HTTP servers that call it."""
