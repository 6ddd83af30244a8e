import sys

from find_jax.cli import main

sys.exit(main())
