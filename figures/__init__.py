"""lazyflow.figures: plots that compare schedules and samplers (``lazyflow plot ...``); uses only the runtime."""
