"""Jobs and results: the contract's JSON validated into frozen dataclasses. Pure logic, no I/O."""
