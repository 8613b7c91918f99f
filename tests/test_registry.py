"""Registry contract: decorator, duplicates, unknown names, and third-party entry points."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from erasebench.api import Evaluator, Method
from erasebench.errors import PluginLoadError, UnknownNameError
from erasebench.registry import EVALUATORS, METHODS, Registry


def fresh() -> Registry[Method]:
    return Registry("method", Method, "erasebench.methods", "erasebench.methods")


def test_builtins_are_discovered_from_the_folder() -> None:
    assert {"none", "dummy"} <= set(METHODS.names())
    assert "dummy" in EVALUATORS.names()
    assert METHODS.get("none").name == "none"


def test_register_and_get() -> None:
    reg = fresh()

    @reg.register("my_method")
    class Mine(Method):
        def erase(self, pipe, task, run):  # type: ignore[no-untyped-def]
            return pipe

    assert reg.get("my_method") is Mine and Mine.name == "my_method"


def test_duplicate_name_raises() -> None:
    reg = fresh()

    class A(Method):
        def erase(self, pipe, task, run):  # type: ignore[no-untyped-def]
            return pipe

    class B(A):
        pass

    reg.register("same")(A)
    with pytest.raises(ValueError, match="duplicate method name 'same'"):
        reg.register("same")(B)


def test_wrong_base_and_bad_name_raise() -> None:
    reg = fresh()
    with pytest.raises(TypeError):
        reg.register("ev")(Evaluator)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lowercase identifier"):
        reg.register("Bad-Name")


def test_unknown_name_lists_valid_and_closest() -> None:
    with pytest.raises(UnknownNameError) as err:
        METHODS.get("dumy")
    msg = str(err.value)
    assert "Did you mean 'dummy'?" in msg and "none" in msg


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed-looking third-party distribution with a good, a broken and a colliding plugin."""
    (tmp_path / "fakeplug.py").write_text(textwrap.dedent("""
        from erasebench.api import Method

        class Good(Method):
            def erase(self, pipe, task, run):
                return pipe
    """))
    (tmp_path / "brokenplug.py").write_text("raise ImportError('needs a package that is not installed')\n")
    info = tmp_path / "fake_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[erasebench.methods]\ngood = fakeplug:Good\nbroken = brokenplug:Broken\nnone = fakeplug:Good\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("fakeplug", "brokenplug"):
        sys.modules.pop(mod, None)
    return tmp_path


def test_entry_points_listed_without_import(fake_dist: Path) -> None:
    reg = fresh()
    assert {"good", "broken"} <= set(reg.names())
    assert "fakeplug" not in sys.modules and "brokenplug" not in sys.modules


def test_good_entry_point_loads_when_selected(fake_dist: Path) -> None:
    cls = fresh().get("good")
    assert issubclass(cls, Method) and cls.name == "good"


def test_broken_entry_point_errors_when_selected_and_warns_when_listed(fake_dist: Path) -> None:
    reg = fresh()
    with pytest.raises(PluginLoadError, match="'broken'.*failed to import.*not installed"):
        reg.get("broken")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = fresh().load_all()
    assert "good" in loaded and "broken" not in loaded
    assert any("broken" in str(w.message) for w in caught)


def test_third_party_cannot_shadow_a_builtin(fake_dist: Path) -> None:
    with pytest.raises(ValueError, match="collides with a built-in"):
        METHODS.get("none")
