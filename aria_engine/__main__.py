from aria_engine.cli import cli

cli()
