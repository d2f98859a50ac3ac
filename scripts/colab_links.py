"""Write the "Open in Colab" links of README.md and the REPO_URL of every notebook's first cell from the one
setting, utils.colab.REPO (change it to your copy's owner/name, then run this)."""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.colab import colab_url, repo_url  # noqa: E402

BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def readme_with_links(text: str) -> str:
    """Every notebook row of the README's table ends with its Colab badge, pointing at REPO."""
    def link(match):
        name = match.group(2)
        return f"{match.group(1)}[![Open in Colab]({BADGE})]({colab_url(name)})"
    return re.sub(r"(\| \[\d\d — [^]]*\]\(notebooks/([^)]+\.ipynb)\)[^\n]*\| )\[!\[Open in Colab\]\([^)]*\)\]\([^)]*\)",
                  link, text)


def notebook_with_repo(text: str) -> str:
    return re.sub(r'REPO_URL = \\"[^\\"]*\\"', f'REPO_URL = \\\\"{repo_url()}\\\\"', text)


def main() -> int:
    readme = ROOT / "README.md"
    readme.write_text(readme_with_links(readme.read_text()))
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        path.write_text(notebook_with_repo(path.read_text()))
        json.loads(path.read_text())  # still valid
    print(f"links and first cells point at {repo_url()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
