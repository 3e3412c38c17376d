#!/usr/bin/env bash
# The same steps as one mlexp run, done by hand: clone, set a parameter, dvc pull, dvc repro,
# commit, dvc push, git push.  Usage: manual_run.sh REPO_URL BASE_BRANCH RUN_BRANCH C WORKDIR
set -euo pipefail
repo=$1 base=$2 branch=$3 c=$4 work=$5
rm -rf "$work"
git clone --quiet --branch "$base" "$repo" "$work"
cd "$work"
git checkout --quiet -b "$branch"
sed -i "s/^  C: .*/  C: $c/" params.yaml
dvc pull --run-cache --allow-missing >/dev/null
dvc repro >/dev/null
git add --all
git -c user.name=bench -c user.email=bench@example.com commit --quiet -m "manual run $branch"
dvc push --run-cache >/dev/null
git push --quiet origin "HEAD:refs/heads/$branch"
