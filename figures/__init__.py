"""Plots comparing schedules and samplers; ``lazyflow plot ...`` writes them into this folder."""
