"""Build hook: a wheel carries the top-level targets/ and schedules/ folders inside the package.

They stay top-level in the repository (the layout users know); qcompile/bundled.py finds the
checkout's folders in a source tree and the package's copies (qcompile/targets/,
qcompile/schedules/) in an install. Everything else is in pyproject.toml.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED = ("targets", "schedules")


class BuildPyWithBundled(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's folders directly
        here = os.path.dirname(os.path.abspath(__file__))
        for name in BUNDLED:
            src, dst = os.path.join(here, name), os.path.join(self.build_lib, "qcompile", name)
            if not os.path.isdir(src):
                raise FileNotFoundError(f"{src}: the bundled folder is missing from the source tree")
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


setup(cmdclass={"build_py": BuildPyWithBundled})
