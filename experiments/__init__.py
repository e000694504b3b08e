"""Scripts that regenerate each analysis's figures and report section (see run_all.py)."""
