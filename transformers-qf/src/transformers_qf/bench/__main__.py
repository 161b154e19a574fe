import sys

from transformers_qf.bench.cli import main

sys.exit(main())
