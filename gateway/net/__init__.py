"""Outbound HTTP: the address rules and the client guarded by them."""
