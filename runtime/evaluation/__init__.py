"""Measuring samplers: the quality bench, the overhead bench, metrics, the peers' samplers and the grid tuner."""
