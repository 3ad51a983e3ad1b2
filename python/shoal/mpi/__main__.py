"""``python -m shoal.mpi script.py [args]`` under ``mpirun``/``srun``: rank 0
runs the script as ``__main__``; every other rank serves its
``backend="mpi"`` pools until the script ends (like ``python -m
mpi4py.futures``)."""

import sys

from . import main

sys.exit(main(sys.argv[1:]))
