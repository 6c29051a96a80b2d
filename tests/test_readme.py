"""The README's Python examples run as written: every ```python block, in order, in one namespace (later
blocks use what earlier ones made), on this machine's device, with the data sets of $FASTSEQ_DATA."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run_as_written(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 9
    monkeypatch.chdir(tmp_path)  # the examples save files (mt.pt, bpe.json) where they run
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    assert namespace["out"].tokens.shape[0] == 2 * 5  # the n-best example ran to the end: 5 of each source
