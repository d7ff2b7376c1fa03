"""Training the waste classifier. Installed with the ``[train]`` extra; never imported by the daemon."""
