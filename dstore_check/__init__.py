"""`dstore-batch check`: a history checker for a cluster under faults.

``history.py`` records every client operation, ``check.py`` checks a history against
what the reads returned, ``faults.py`` injects faults into a running cluster, and
``runner.py`` puts them together (the command).
"""
