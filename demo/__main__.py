import sys

from demo.tour import main

sys.exit(main())
