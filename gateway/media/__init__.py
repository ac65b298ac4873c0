"""Media: signed links, the `media` table, downloads from Meta, and the route that serves files."""
