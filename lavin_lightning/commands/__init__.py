"""The suite's own commands (`lavin-lightning params|score|prepare|table|evaluate|chat|demo`).

Each module has `main(argv)`; `lavin_lightning.cli` dispatches to it.
"""
