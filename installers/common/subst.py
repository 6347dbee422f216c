"""Fills @NAME@ placeholders in an installer template: subst.py FILE NAME=VALUE... > OUT.

Fails if a placeholder is left unfilled, so a template and its installer cannot drift apart
silently. Used by debian/build.sh and install.sh."""

import re
import sys


def main() -> int:
    path, pairs = sys.argv[1], sys.argv[2:]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for pair in pairs:
        name, _, value = pair.partition("=")
        text = text.replace(f"@{name}@", value)
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        print(f"subst.py: {path}: nothing fills {', '.join(left)}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
