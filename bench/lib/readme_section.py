#!/usr/bin/env python3
"""Replace the text between `<!-- run.sh:begin -->` and `<!-- run.sh:end -->` in a Markdown file.

    readme_section.py README.md SECTION.md

Creates the two marker lines at the end of the file when they are missing. Nothing outside the markers changes.
The file is re-read right before the write and replaced atomically (rename), to keep the window for clobbering a
concurrent editor's change as small as possible.
"""
import os
import sys

BEGIN, END = "<!-- run.sh:begin -->", "<!-- run.sh:end -->"

path, section_path = sys.argv[1], sys.argv[2]
section = open(section_path, encoding="utf-8").read().strip("\n")
text = open(path, encoding="utf-8").read()
b, e = text.find(BEGIN), text.find(END)
if b < 0 or e < 0 or e < b:
    if b >= 0 or e >= 0:
        sys.exit(f"{path}: the markers are incomplete or out of order; fix them by hand")
    new = text.rstrip("\n") + "\n\n" + BEGIN + "\n" + section + "\n" + END + "\n"
else:
    new = text[: b + len(BEGIN)] + "\n" + section + "\n" + text[e:]
tmp = path + ".run-sh.tmp"
with open(tmp, "w", encoding="utf-8") as f:
    f.write(new)
os.chmod(tmp, os.stat(path).st_mode & 0o7777)
os.replace(tmp, path)
