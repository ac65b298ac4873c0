"""The API for the admin's own systems: publish, pull, stream, API keys, and `listen`."""
