import sys

from export.cli import main

# The guard keeps a spawned export step (export.isolated) from running the command again.
if __name__ == "__main__":
    sys.exit(main())
