"""Every artefact committed under results/ is listed in results/README.md, with the command
that made it: the brief's rule that every committed number says how it was made."""
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_every_file_and_folder_under_results_is_named_in_its_readme():
    listing = (RESULTS / "README.md").read_text()
    committed = sorted(p.name for p in RESULTS.iterdir() if p.name != "README.md")
    assert committed, "results/ holds nothing but its README"
    unlisted = [name for name in committed if f"`{name}" not in listing]
    assert not unlisted, (f"results/README.md does not name {unlisted}: add a row for each, "
                          "with the command that made it")
