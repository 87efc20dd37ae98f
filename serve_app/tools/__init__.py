"""Command-line tools a user runs (``python -m serve_app.tools.<name>``)."""
