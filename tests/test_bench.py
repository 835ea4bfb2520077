"""`qcompile bench --profile`: the time per fused kernel of the bundled digits CNN."""

import json

import pytest

import qcompile
from qcompile import zoo
from qcompile.runtime.bench import benchmark, library_module, profile
from qcompile.runtime.profile import PROFILE_KEY, format_profile
from conftest import run_cli


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "digits"
    qcompile.compile(zoo.DIGITS_MODEL, target="auto", out_dir=str(out))
    return out


def _check_profile(p: dict, art):
    rows = p["rows"]
    assert rows, "no kernels profiled"
    lib = library_module(art)
    # every kernel row is a function of the compiled library, called at least once per run
    for r in rows:
        assert r["kind"] == "kernel" and r["calls"] >= 1 and r["ms"] > 0 and r["timed"] == "isolated"
        assert lib.implements_function(r["name"], True), r["name"]
        assert r["ms"] == pytest.approx(r["us_per_call"] * r["calls"] / 1e3)
        assert r["pct"] == pytest.approx(100 * r["ms"] / p["total_ms"])
    # the digits CNN: 4 convolutions, a pool, a mean and the classifier matmul
    names = " ".join(r["name"] for r in rows)
    assert names.count("conv2d") == 4 and "matmul" in names and "max_pool2d" in names
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    # the kernels and the VM's share add up to the plain run, and the kernels are most of it
    assert p["kernels_ms"] == pytest.approx(sum(r["ms"] for r in rows))
    assert p["kernels_ms"] + p["vm_ms"] == pytest.approx(p["total_ms"])
    assert 0.2 * p["total_ms"] <= p["kernels_ms"] <= 2.0 * p["total_ms"], p
    assert sum(r["pct"] for r in rows) + p["vm_pct"] == pytest.approx(100.0)
    # the VM's own calls (allocation, reshape) are counted, not timed as kernels
    assert p["builtins"] and all(k.startswith("vm.builtin.") for k in p["builtins"])
    assert p["calls_per_run"] == sum(r["calls"] for r in rows) + sum(b["calls"] for b in p["builtins"].values())


def test_profile_digits_kernels_add_up(digits_dir):
    art = qcompile.load(str(digits_dir))
    total = benchmark(art, threads=1, warmup=5, repeat=50)["median_ms"]
    p = profile(art, threads=1, repeat=20, total_ms=total)
    assert p["total_ms"] == total and p["threads"] == 1 and p["target"] == art.target_name
    _check_profile(p, art)
    table = format_profile(p)
    assert "fused_conv2d" in table and "% total" in table and "total (median run, no hook)" in table
    # profiling detaches its hook: the artifact still runs and benches normally
    assert benchmark(art, threads=1, warmup=1, repeat=5)["median_ms"] > 0


def test_profile_in_memory_artifact_measures_its_own_total():
    art = qcompile.compile(zoo.DIGITS_MODEL, target="auto")  # no out_dir: the executable stays in memory
    p = profile(art, threads=1, warmup=2, repeat=10)
    _check_profile(p, art)


def test_cli_bench_profile_json(digits_dir, tmp_path):
    res = tmp_path / "bench.json"
    proc = run_cli("bench", digits_dir, "--threads", "1", "--warmup", "2", "--repeat", "20", "--profile", "--json", res)
    assert proc.returncode == 0, proc.stderr
    assert "kernel / VM op" in proc.stdout and "% total" in proc.stdout and "fused_conv2d" in proc.stdout
    r = json.loads(res.read_text())
    for key in ("median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "repeat", "threads", "target"):
        assert key in r  # the stable keys are unchanged
    p = r[PROFILE_KEY]
    assert p["total_ms"] == r["median_ms"] and p["repeat"] == 20
    _check_profile(p, qcompile.load(str(digits_dir)))
    # the table lists the kernels in the JSON's order (by time)
    lines = proc.stdout.splitlines()
    at = [next(i for i, ln in enumerate(lines) if ln.startswith(row["name"][:40])) for row in p["rows"]]
    assert at == sorted(at)


def test_cli_bench_profile_is_local_only(digits_dir):
    proc = run_cli("bench", digits_dir, "--profile", "--rpc", "127.0.0.1:1")
    assert proc.returncode == 2 and "--profile" in proc.stderr
