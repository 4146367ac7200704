"""The ``b2b`` command and its subcommands."""
