#!/usr/bin/env bash
# The project's one test command: pytest, then every notebook under papermill with small
# parameters (inline figures, as in Jupyter), the numbers each notebook recorded against
# ci/expected/, then the executed notebooks as an HTML book checked in headless Chromium.
# Executed notebooks, records, the book and its screenshots go to $ARTIFACTS (default artifacts/).
set -euo pipefail
cd "$(dirname "$0")/.."
export ARTIFACTS="$(realpath -m "${ARTIFACTS:-artifacts}")"
export FLARE_NB_RECORD_DIR="$ARTIFACTS/records"
export MPLBACKEND=Agg   # pytest only; ci/run_notebooks.py removes it so the notebooks use the inline backend
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$ARTIFACTS"
rm -rf "$FLARE_NB_RECORD_DIR"

echo "== pytest =="
python -m pytest -q "$@"

echo "== notebooks (papermill, quick parameters) =="
python ci/run_notebooks.py --out "$ARTIFACTS/notebooks"

python ci/check_scene_page.py --screenshot "$ARTIFACTS/scene_page.png"   # scene.html in headless chromium, offline

echo "== recorded numbers =="
python ci/check_records.py --records "$FLARE_NB_RECORD_DIR" --expected ci/expected

echo "== book (nbconvert HTML, checked in headless chromium) =="
rm -rf "$ARTIFACTS/book" "$ARTIFACTS/book_shots"
python ci/build_book.py --executed "$ARTIFACTS/notebooks" --out "$ARTIFACTS/book"
python ci/check_book.py --book "$ARTIFACTS/book" --shots "$ARTIFACTS/book_shots"
