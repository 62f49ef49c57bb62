"""The shape of the code: sub-packages by layer without import cycles, modules of a readable size, documented
packages, and a README and docs whose links resolve."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / "benchmark").rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """module -> the benchmark modules it imports, at module level or inside a function (a lazy import still ties
    the two modules together); `from package import module` counts as importing the module."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                     else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (each reported once, from its first module)."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_benchmark_has_no_import_cycle():
    graph = import_graph()
    assert graph["benchmark.scoring.scorer"] >= {"benchmark.scoring.metrics", "benchmark.scoring.declarations"}
    assert cycles(graph) == []


def test_the_suite_errors_import_nothing_and_radiomics_does_not_import_back():
    graph = import_graph()
    assert graph["benchmark.errors"] == set()
    tree = ast.parse((ROOT / "benchmark" / "errors.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not graph["benchmark.scoring.radiomics"] & {"benchmark.scoring.weights", "benchmark.scoring.declarations"}


def test_layers_import_downwards_only():
    """protocol and scoring never import run, reporting, orchestration or cli; reporting never imports run."""
    above = {"protocol": ("run", "reporting", "orchestration", "cli"), "scoring": ("run", "reporting", "orchestration",
                                                                                 "cli"),
             "reporting": ("run", "orchestration", "cli"), "run": ("orchestration", "cli", "reporting")}
    bad = [(m, t) for m, targets in import_graph().items() for t in targets
           for layer, banned in above.items() if m.startswith(f"benchmark.{layer}.")
           and any(t.startswith(f"benchmark.{b}.") for b in banned)]
    assert bad == []


@pytest.mark.parametrize("folder", ["benchmark", "methods", "datasets", "tests"])
def test_no_module_is_longer_than_the_limit(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_sub_package_says_what_it_holds():
    for init in (ROOT / "benchmark").rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{init.relative_to(ROOT)} has no docstring"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def links(path: Path) -> list[str]:
    return [t for t in LINK.findall(path.read_text()) if not re.match(r"[a-z]+:", t)]


def test_the_link_reader_finds_relative_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("see [the docs](docs/a.md#part), [a site](https://example.org) and ![fig](results/x.png)\n")
    assert links(page) == ["docs/a.md#part", "results/x.png"]


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_the_readme_and_docs_links_resolve(page):
    """Every relative link of the page names a file or folder of the repository (and an anchor, a heading of it)."""
    path = ROOT / page
    broken = []
    for target in links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md":
            headings = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                        for h in re.findall(r"^#+ (.*)$", dest.read_text(), re.M)}
            if anchor not in headings:
                broken.append(target)
    assert broken == []


def test_the_readmes_batch_sizes_are_the_ones_the_runs_use():
    """A method row of the README that states a batch size names the one its `tiny` config resolves to (pix2pix's
    row said "batch 1", the paper's, while its runs used 4)."""
    from benchmark.protocol.config import RunSpec, resolve_config

    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if re.match(r"\| `[a-z0-9-]+` \|", line)]
    checked = 0
    for row in rows:
        method = re.match(r"\| `([a-z0-9-]+)` \|", row).group(1)
        stated = {int(n) for n in re.findall(r"batch (\d+)", row)}
        if stated:
            assert resolve_config(RunSpec(method))["batch_size"] in stated, row[:80]
            checked += 1
    assert checked >= 1  # pix2pix states its batch


def table_shapes(text: str) -> list[tuple[int, int, int]]:
    """(line, cells of the header, cells of the delimiter row) of every markdown table in `text`, cells split at
    unescaped "|" as GitHub does (a "\\|" stays inside its cell)."""
    lines = text.splitlines()
    shapes = []
    for i in range(len(lines) - 1):
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()) and (
                i == 0 or not lines[i - 1].startswith("|")):
            shapes.append((i + 1, *(len(re.split(r"(?<!\\)\|", row.strip())) for row in lines[i:i + 2])))
    return shapes


def test_table_shapes_split_cells_as_github_does():
    assert table_shapes("| a | b |\n|:--|:--|\n| 1 | 2 |\n") == [(1, 4, 4)]
    assert table_shapes("| a | |x| ↓ |\n|:--|:--|\n") == [(1, 6, 4)]  # the pipes of |x| end cells
    assert table_shapes("| a | \\|x\\| ↓ |\n|:--|:--|\n") == [(1, 4, 4)]


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
                                  *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "results").rglob("*.md"))])
def test_every_markdown_table_has_as_many_header_cells_as_columns(page):
    """A header cell such as "|SSIM (src) − ideal|" must escape its pipes, or the table does not render."""
    assert [s for s in table_shapes((ROOT / page).read_text()) if s[1] != s[2]] == []
