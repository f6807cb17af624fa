"""Command-line tools that sit beside training (dataset statistics, config loading)."""
