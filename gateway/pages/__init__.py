"""The admin pages behind the login, with their templates/ and static/."""
