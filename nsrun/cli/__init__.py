"""The command line: nsrun's one grammar, its dispatch, the typer help, the launcher."""
