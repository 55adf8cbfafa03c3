#!/usr/bin/env bash
# Installs the real data lopt's tests and examples use, from Debian's packages:
# Fashion-MNIST (/usr/share/datasets/fashion-mnist/) and the `fortunes` English text
# corpus (/usr/share/games/fortunes/). Fails if either cannot be installed, so CI does not
# silently test less. CIFAR-10 has no package: see the README's "Data" section.
set -euo pipefail
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
[ -f /usr/share/games/fortunes/fortunes ] || need+=(fortunes)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
test -d /usr/share/datasets/fashion-mnist
test -f /usr/share/games/fortunes/fortunes
echo "data installed: fashion-mnist, fortunes"
