"""What the bin remembers and reports: the decision record, the SQLite event log, the frame
spool, and the systemd journal and sd_notify."""
