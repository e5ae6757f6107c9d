"""Step types: one module per type; ``registry.STEP_TYPES`` maps names to classes."""
