"""What a person reads: the demo's table, the cover letter, tables."""
