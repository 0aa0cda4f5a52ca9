"""``tomllib`` on every supported Python: the standard library's from 3.11, ``tomli`` on 3.10.

Python 3.10 is JetPack 6's (Ubuntu 22.04), our main edge target; ``tomli`` is the same parser that
became ``tomllib`` and the pyproject installs it only there. One import site, so no module repeats
the version test.
"""

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised by CI's Python 3.10 run
    import tomli as tomllib

__all__ = ["tomllib"]
