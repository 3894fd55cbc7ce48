"""One module per ``cryoflow`` sub-command: a docstring, ``add_args(parser)``, ``main(args)``."""
