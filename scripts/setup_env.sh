#!/usr/bin/env bash
# Create or update the virtual environment in .venv with everything the app and tests need.
# torch and torchvision go first, then facenet-pytorch with --no-deps: its metadata pins
# torch<2.3 although it runs on current releases.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "Creating the virtual environment in .venv"
    "$python_bin" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.fer-studio-installed
wanted=$(cat requirements.txt pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    exit 0
fi

python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
python -m pip install --quiet -r requirements.txt
python -m pip install --quiet --no-deps facenet-pytorch==2.6.0
python -m pip install --quiet --no-deps -e .
echo "$wanted" > "$stamp"
echo "Virtual environment ready in .venv"
