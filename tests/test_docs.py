"""The docs' generated tables match the results files and declarations they come from (docs/generate.py),
every page they name exists, and ARCHITECTURE.md stands on its own."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_generated_tables_are_up_to_date():
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "generate.py"), "--check"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_links_between_the_docs_resolve():
    for page in [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+?\.md)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which is missing"


def test_architecture_names_no_map_outside_the_repository():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    assert "../shared" not in text
