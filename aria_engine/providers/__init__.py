"""Provider adapters, one module per wire. `base` holds the shared types; adapters never import each other."""
