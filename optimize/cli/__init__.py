"""Command-line interface: one Typer sub-app per command file; each parses options and calls the library."""
