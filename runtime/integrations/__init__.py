"""lazyflow inside other libraries' pipelines (diffusers)."""
