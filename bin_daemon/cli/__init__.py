"""The command line: thin commands that parse, call the part that does the work, and print.

``commands`` holds the parser and the daemon's own commands (run, check-config, events,
classify, lid, sensor); ``model`` the model store, ``ml`` training and evaluation, ``fleet``
the MQTT fleet view.
"""

from bin_daemon.cli.commands import main

__all__ = ["main"]
