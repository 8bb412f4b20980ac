"""Write docs/api.md, the API reference, from the docstrings of vigrad's public names.

.venv/bin/python scripts/gen_api_docs.py          # rewrite docs/api.md
.venv/bin/python scripts/gen_api_docs.py --check  # exit 1 if docs/api.md is out of date
"""

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

# Public modules, each documented by its __all__ (vigrad itself first).
MODULES = [
    "vigrad",
    "vigrad.sgmcmc",
    "vigrad.diagnostics",
    "vigrad.flows",
    "vigrad.nn",
    "vigrad.zoo",
]
OUT = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def _signature(obj) -> str:
    try:
        signature = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""
    # Default values that are functions print with their address, which changes every run.
    return re.sub(r"<function (\S+) at 0x[0-9a-f]+>", r"\1", signature)


def _entry(module: str, name: str, obj) -> list[str]:
    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "value"
    lines = [f"### `{module}.{name}`", ""]
    if kind != "value":
        lines += ["```python", f"{name}{_signature(obj)}", "```", ""]
    doc = inspect.getdoc(obj)
    if doc and kind != "value":
        lines += [doc, ""]
    return lines


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `scripts/gen_api_docs.py`; every public name of each "
        "module's `__all__`.",
        "",
    ]
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        lines += [f"## `{module_name}`", ""]
        summary = (inspect.getdoc(module) or "").split("\n\n")[0]
        if summary:
            lines += [summary, ""]
        for name in sorted(getattr(module, "__all__", [])):
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue
            lines += _entry(module_name, name, obj)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
