"""What every plot script of coil shares: matplotlib's pyplot without a display, or exit status
3 (coil's "matplotlib is missing", scaling/plot.h) with the reason."""
import sys


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"matplotlib is missing ({e})", file=sys.stderr)
        sys.exit(3)
    return plt
