"""The case domain: the city, cases and their state machine, who acts on them, what residents are told, figures."""
