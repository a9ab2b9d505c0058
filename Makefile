# Shortcuts for machines with Docker (the images and the kind run); everything else runs with
# the README's two commands.
TAG ?= 0.1.0

.PHONY: images kind-e2e

images:
	for target in proxy pilot echo; do \
	  docker build -f docker/Dockerfile --target $$target -t mesh/$$target:$(TAG) . ; \
	done

kind-e2e:
	TAG=$(TAG) scripts/kind-e2e.sh
