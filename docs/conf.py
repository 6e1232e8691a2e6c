"""Sphinx configuration for the autorestrictor documentation.

Build (warnings are errors, as in CI)::

    python -m sphinx -W -b html docs docs/_build/html
"""

import os
import sys

# Document the code of this checkout, whatever is installed.
sys.path.insert(0, os.path.abspath(".."))

project = "autorestrictor"
author = "the autorestrictor developers"
copyright = "2021-2026, the autorestrictor developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "*.json"]

myst_heading_anchors = 3

# The docstrings are numpydoc style; napoleon reads them without enforcing
# numpydoc's validation.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Document what this project wrote: a plugin hook without a docstring of its
# own would otherwise show distributed's, whose cross-references point into
# distributed's documentation.
autodoc_inherit_docstrings = False
autodoc_default_options = {"members": True}
