"""Pure market domain: money rules, job states, typed errors. No I/O, no other layer imported."""
