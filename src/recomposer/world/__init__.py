"""The shapes world: procedural scenes with exact ground truth (training data and the judge's truth)."""
