"""Small helpers every stage uses: processes, deadlines, sizes."""
