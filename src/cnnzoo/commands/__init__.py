"""Subcommands of the ``cnnzoo`` command line, one module each (see ``cnnzoo.cli``)."""
