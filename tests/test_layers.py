"""No import cycles in the package (issue 17): the layers contract in
pyproject.toml (import-linter, run by `make lint`) forbids them between
packages; this checks module by module, as Python imports at run time
(imports under TYPE_CHECKING, which only the type checker follows, aside)."""

from __future__ import annotations

import grimp


def test_no_module_imports_itself_back_through_a_chain() -> None:
    graph = grimp.build_graph("gateway", exclude_type_checking_imports=True)
    cycles = [
        (module, imported)
        for module in sorted(graph.modules)
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.chain_exists(importer=imported, imported=module)
    ]
    assert cycles == []
