"""`python -m lamm.datasets.synth --out DIR` runs the generator without the `lamm` CLI."""
import sys

from lamm.datasets.synth import main

sys.exit(main())
