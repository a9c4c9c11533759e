"""What every stage uses: errors, atomic folders and file readers, model-structure lookups, model loading,
tokenisation, generation, KL, judges, figures, and the one set of edit defaults (settings)."""
