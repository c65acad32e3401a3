"""`python -m raftcore.testing.sim`: the same as `raftcore sim`."""
import sys

from raftcore.testing.sim.runner import main

sys.exit(main())
