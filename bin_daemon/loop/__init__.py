"""The sorting loop: the sorter's state machine, the bin policy, the lid guard, and the
service that wires hardware, model and records together (signals, sd_notify)."""
