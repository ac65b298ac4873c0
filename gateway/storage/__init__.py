"""Storage: connections, transactions, migrations (SQLite and PostgreSQL), backup, copy-db."""
