"""The ``millrace`` command line. One module per command group; each command parses arguments and calls one
library function. Nothing outside this package imports it."""
