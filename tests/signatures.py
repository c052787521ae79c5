"""Signatures of every function and method a module defines, as plain data.

Run as a script under an interpreter that still has ``smtpd`` (CPython 3.11)
to print them as JSON: ``python3.11 tests/signatures.py smtpd``.  The test
suite compares smtpd_compat with that output (or with the committed snapshot
``cpython311_smtpd_signatures.json`` when no 3.11 is installed).
"""

import importlib
import inspect
import json
import sys
import warnings


def describe(function):
    """Parameters of *function* as [name, kind, default or None], no annotations.

    Annotations are left out on purpose: smtpd has none, and adding them
    changes nothing for a caller or an override.
    """
    described = []
    for parameter in inspect.signature(function).parameters.values():
        default = None
        if parameter.default is not parameter.empty:
            default = repr(parameter.default)
        described.append([parameter.name, parameter.kind.name, default])
    return described


def _functions_of_class(cls):
    found = {}
    for name, value in vars(cls).items():
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value):
            found[name] = describe(value)
    return found


def module_signatures(module_name):
    """{"functions": {name: params}, "classes": {class: {method: params}}}."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module(module_name)
    functions = {}
    classes = {}
    for name, value in vars(module).items():
        if getattr(value, "__module__", None) != module_name:
            continue
        if inspect.isfunction(value):
            functions[name] = describe(value)
        elif inspect.isclass(value):
            classes[name] = _functions_of_class(value)
    return {"functions": functions, "classes": classes}


if __name__ == "__main__":
    json.dump(module_signatures(sys.argv[1]), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
