"""The package's public surface: everything in __all__ exists and is documented."""

import inspect

import nltutorial


def test_all_names_exist_and_have_docstrings():
    for name in nltutorial.__all__:
        obj = getattr(nltutorial, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert inspect.getdoc(obj), f"nltutorial.{name} has no docstring"


def test_all_is_sorted_and_unique():
    assert len(set(nltutorial.__all__)) == len(nltutorial.__all__)
    assert sorted(nltutorial.__all__) == nltutorial.__all__
