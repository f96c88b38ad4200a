"""core: what every stage shares and none owns: replies and errors, addresses, units and rates,
a recipient's states. Imports no stage and not the configuration (docs/architecture.md,
Layers).
"""
