#!/usr/bin/env bash
# README's test command on the versions students have, each in its own virtual environment
# (built once, cached) and a fresh clone of this repository's HEAD:
#   oldest  the floors requirements.txt declares, on Python 3.9 (the oldest it supports)
#   colab   Colab's published runtime (googlecolab/backend-info, 2026-08), on Python 3.13
#   newest  what `pip install -r requirements.txt` resolves to today, on Python 3.13
# One summary line per platform; exit 1 if any fails. Torch wheels are several GB each: pip's
# cache keeps them. PIP_CONSTRAINT=/dev/null lifts a machine's pip cap (a constraint file in pip's
# configuration) for these installs only; an empty PIP_CONSTRAINT= does not.
#   bash tests/platforms.sh [oldest colab newest]    PLATFORMS_CACHE=DIR to move the cache
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${PLATFORMS_CACHE:-$HOME/.cache/cnn-lecture-platforms}
test_cmd=$(grep -E '^python -m pytest' "$repo/.ci/run")  # README's command, as CI runs it
extras="pytest-xdist ipykernel"  # what README's Tests section installs beside requirements

packages() {
  case "$1" in
    oldest) sed -n 's/^\([A-Za-z_-]*\)>=\([0-9.]*\).*/\1==\2/p' "$repo/requirements.txt" ;;
    colab) echo "torch==2.11.0 torchvision==0.26.0 numpy==2.1.3 matplotlib==3.10.0" \
                "ipython==7.34.0 ipykernel==6.17.1 pytest" ;;
    newest) echo "-r $repo/requirements.txt" ;;
  esac
}

python_of() {  # python3.9 or python3.13 from PATH, or from pyenv when it has one
  local v p
  v=$(case "$1" in oldest) echo 3.9 ;; *) echo 3.13 ;; esac)
  p=$(pyenv root 2>/dev/null)/versions/$(pyenv versions --bare 2>/dev/null | grep "^$v\." | tail -1)
  if [ -x "$p/bin/python$v" ]; then echo "$p/bin/python$v"; else echo "python$v"; fi
}

build() {  # the environment of platform $1, made once; its key is what it installs
  local env="$cache/$1" want
  want="$(python_of "$1") $(packages "$1" | tr '\n' ' ') $extras uncapped"
  [ "$1" = newest ] && want="$want $(date +%Y-%m)"  # "today": rebuilt once a month
  if [ "$(cat "$env/.want" 2>/dev/null)" != "$want" ]; then
    rm -rf "$env" && "$(python_of "$1")" -m venv "$env" || return 1
    # shellcheck disable=SC2046
    PIP_CONSTRAINT=/dev/null "$env/bin/python" -m pip install -q --disable-pip-version-check \
      $(packages "$1") $extras >"$env.log" 2>&1 || { echo "pip failed: $env.log"; return 1; }
    echo "$want" >"$env/.want"
  fi
}

versions() {
  "$1/bin/python" - <<'EOF'
import platform, torch, torchvision, numpy, matplotlib, pytest, IPython, ipykernel
print(f"Python {platform.python_version()}, torch {torch.__version__}, torchvision "
      f"{torchvision.__version__}, numpy {numpy.__version__}, matplotlib {matplotlib.__version__}, "
      f"pytest {pytest.__version__}, IPython {IPython.__version__}, ipykernel {ipykernel.__version__}")
EOF
}

failed=0
summary=()
for name in "${@:-oldest colab newest}"; do
  for p in $name; do
    if ! build "$p"; then
      summary+=("$p: FAILED to install ($cache/$p.log)"); failed=1; continue
    fi
    clone=$(mktemp -d)
    git clone -q "$repo" "$clone/repo"
    start=$(date +%s)
    (cd "$clone/repo" && PATH="$cache/$p/bin:$PATH" $test_cmd) >"$cache/$p.test.log" 2>&1
    code=$?
    tally=$(grep -E '(passed|failed|error)' "$cache/$p.test.log" | tail -1 | tr -d '=')
    result=$([ $code = 0 ] && echo passed || { failed=1; echo FAILED; })
    summary+=("$p: $result ($tally, $(($(date +%s) - start)) s; $(versions "$cache/$p"))")
    rm -rf "$clone"
  done
done
printf '%s\n' "${summary[@]}"
exit $failed
