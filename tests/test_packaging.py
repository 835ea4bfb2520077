"""A built wheel carries everything bundled: every target, the tuning records and the digits data.

Built and installed as a user would (`pip wheel --no-deps`, then `pip install` into a fresh venv),
then run from outside the checkout, so nothing can come from the source tree. The venv reaches the
dependencies (TVM, onnx...) already installed for the tests through a .pth line instead of
downloading them again; qcompile itself comes only from the wheel.
"""

import json
import os
import re
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_TARGETS = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "targets")) if f.endswith(".yaml"))
BUNDLED_SCHEDULES = sorted(d for d in os.listdir(os.path.join(ROOT, "schedules"))
                           if os.path.isdir(os.path.join(ROOT, "schedules", d)))


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with qcompile installed from a wheel built from this checkout: (venv, workdir)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # the test extras carry setuptools>=77, so the wheel builds without downloading a build backend
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", ROOT])
    (wheel,) = (tmp / "dist").glob("qcompile-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    purelib = _run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout
    # the dependencies this interpreter has, appended after the venv's own site-packages; a plain
    # path line processes none of that folder's .pth files, so the checkout's editable qcompile stays out
    (open(os.path.join(purelib.strip(), "deps.pth"), "w")
     .write(sysconfig.get_paths()["purelib"] + "\n"))
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps", wheel])
    work = tmp / "work"
    work.mkdir()
    return venv, work


def test_wheel_carries_every_target(installed):
    venv, work = installed
    where = _run([venv / "bin" / "python", "-c", "import qcompile; print(qcompile.__file__)"], cwd=work).stdout
    assert str(venv) in where, f"qcompile came from {where.strip()}, not from the wheel"
    out = _run([venv / "bin" / "qcompile", "targets"], cwd=work).stdout
    listed = sorted(line.split()[0] for line in out.splitlines() if line.strip())
    assert listed == BUNDLED_TARGETS, out
    assert "<- auto" in out


def test_wheel_compile_applies_bundled_records(installed):
    """A compile from the wheel applies the records of the wheel's own schedules/ (x86_64 has some
    for the digits CNN's fp32 kernels), and reads the bundled digits model from the package."""
    venv, work = installed
    code = ("import json, qcompile, qcompile.zoo as z, qcompile.schedule.records as r\n"
            "print(json.dumps({'model': z.DIGITS_MODEL, 'schedules': sorted(os.listdir(r.SCHEDULES_DIR))}))")
    info = json.loads(_run([venv / "bin" / "python", "-c", "import os\n" + code], cwd=work).stdout)
    assert str(venv) in info["model"]
    assert info["schedules"] == BUNDLED_SCHEDULES
    out = work / "digits_x86_64"
    _run([venv / "bin" / "qcompile", "compile", info["model"], "--target", "x86_64", "-o", out], cwd=work)
    notes = json.loads((out / "metadata.json").read_text())["notes"]
    applied = [n for n in notes if n.startswith("tuning records applied from")]
    assert applied, notes
    m = re.search(r"(\S+) \((\d+) of (\d+) kernels\)", applied[0])
    assert m and str(venv) in m.group(1) and m.group(1).endswith(os.path.join("qcompile", "schedules", "x86_64"))
    assert int(m.group(2)) > 0, applied[0]
    run = _run([venv / "bin" / "qcompile", "info", out], cwd=work)
    assert "x86_64" in run.stdout
