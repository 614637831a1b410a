"""Operator tools: the commands an operator runs beside the services (demo, export, audit...)."""
