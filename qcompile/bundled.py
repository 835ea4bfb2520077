"""Where the bundled folders are: targets/ and schedules/.

In the repository they are top-level folders (targets/, schedules/), the layout users know. A wheel
carries copies inside the package (qcompile/targets/, qcompile/schedules/; setup.py's build_py
puts them there). A source checkout (an editable install, or running from the repo) uses the
top-level ones; an installed wheel uses its own copies.
"""

from __future__ import annotations

import os

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(_PACKAGE)


def bundled_dir(name: str) -> str:
    """The bundled folder `name` ('targets' or 'schedules'): the wheel's copy, else the checkout's."""
    packaged = os.path.join(_PACKAGE, name)
    if os.path.isdir(packaged):
        return packaged
    # a checkout: qcompile/ sits next to pyproject.toml and the top-level folders
    if os.path.isfile(os.path.join(_CHECKOUT, "pyproject.toml")):
        return os.path.join(_CHECKOUT, name)
    return packaged  # an install without the folder: callers see an empty or missing folder and say so
