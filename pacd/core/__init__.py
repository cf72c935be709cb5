"""Pure rules and models of pacd: no I/O, no clock reads."""
