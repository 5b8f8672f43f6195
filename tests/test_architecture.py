"""docs/architecture.md lists every module of the code: a module added without a line there fails here."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("asr", "lm", "scripts", "bench")


def documented_modules() -> dict[str, set[str]]:
    """File names listed under each package's heading in the doc's module list."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    listing = text[text.index("## Modules"):]
    found: dict[str, set[str]] = {}
    package = None
    for line in listing.splitlines():
        head = line.split()[0] if line.strip() else ""
        if not line.startswith(" ") and head.rstrip("/") in PACKAGES:
            package = head.rstrip("/")
            found[package] = set()
        elif not line.startswith(" "):
            package = None
        elif package is not None:
            found[package].update(word.strip("(),;`").split("/")[-1] for word in line.split()
                                   if word.strip("(),;`").endswith((".py", ".sh")))
    return found


def test_every_module_is_in_the_architecture_doc():
    documented = documented_modules()
    assert set(documented) == set(PACKAGES)
    for package in PACKAGES:
        present = {p.name for p in (ROOT / package).iterdir() if p.suffix in (".py", ".sh")}
        assert present, package
        missing = sorted(present - documented[package])
        gone = sorted(documented[package] - present)
        assert not missing, f"docs/architecture.md lacks {package}/{missing}: add a line for each"
        assert not gone, f"docs/architecture.md lists {package}/{gone}, which no longer exist"
